package ota

import (
	"context"
	"testing"

	"github.com/factsync/factsync/events"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func TestCeremoniesGaugeCountsEachState(t *testing.T) {
	s := New(Config{})
	s.ledger = NewLedger(nil)
	for id, state := range map[string]events.OTAState{
		"a": events.OTAStateCollecting, "b": events.OTAStateCollecting,
		"c": events.OTAStateActivated, "d": events.OTAStateAborted,
	} {
		s.ledger.Ceremonies[id] = events.OTACeremony{ID: id, State: state}
	}
	reader := sdkmetric.NewManualReader()
	reg, err := s.observeCeremonies(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter(Name))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == "factsync.ota.ceremonies" {
				for _, dp := range g.DataPoints {
					state, _ := dp.Attributes.Value("state")
					got[state.AsString()] = dp.Value
				}
			}
		}
	}
	want := map[string]int64{"proposed": 0, "collecting": 2, "committed": 0, "activated": 1, "aborted": 1}
	if len(got) != len(want) {
		t.Fatalf("factsync.ota.ceremonies = %v, want %v", got, want)
	}
	for state, n := range want {
		if got[state] != n {
			t.Fatalf("factsync.ota.ceremonies = %v, want %v", got, want)
		}
	}
}
