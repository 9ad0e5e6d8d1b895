package ota

import (
	"context"
	"errors"
	"maps"
	"testing"

	"github.com/factsync/factsync/events"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// collect reads every data point of metric name, keyed by the value of
// attribute key ("" when the point has none).
func collect(t *testing.T, reader *sdkmetric.ManualReader, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	add := func(attrs attribute.Set, v int64) {
		val, ok := attrs.Value(key)
		if !ok {
			got[""] = v
			return
		}
		got[val.AsString()] = v
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch data := m.Data.(type) {
			case metricdata.Gauge[int64]:
				for _, dp := range data.DataPoints {
					add(dp.Attributes, dp.Value)
				}
			case metricdata.Sum[int64]:
				for _, dp := range data.DataPoints {
					add(dp.Attributes, dp.Value)
				}
			}
		}
	}
	return got
}

func wantPoints(t *testing.T, name string, got, want map[string]int64) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Fatalf("%s = %v, want %v", name, got, want)
	}
}

// newMetered is a service with instruments on a manual reader.
func newMetered(t *testing.T) (*Service, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	m, err := newMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter(Name))
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{})
	s.metrics = m
	s.ledger = NewLedger(nil)
	return s, reader
}

func TestGaugesReadTheLedger(t *testing.T) {
	s, reader := newMetered(t)
	report := func(status events.OTAReadyStatus) events.OTAReadiness { return events.OTAReadiness{Status: status} }
	for id, c := range map[string]events.OTACeremony{
		"a": {State: events.OTAStateCollecting, Readiness: []events.OTAReadiness{report(events.OTAReady), report(events.OTARejected)}},
		"b": {State: events.OTAStateCollecting, Readiness: []events.OTAReadiness{report(events.OTANotReady)}},
		"c": {State: events.OTAStateActivated, Readiness: []events.OTAReadiness{report(events.OTAReady), report(events.OTAReady)}},
		"d": {State: events.OTAStateAborted},
	} {
		c.ID = id
		s.ledger.Ceremonies[id] = c
	}
	s.ledger.Active = events.ActiveVersion{Protocol: 3}
	reg, err := s.observe()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()

	wantPoints(t, "factsync.ota.ceremonies", collect(t, reader, "factsync.ota.ceremonies", "state"),
		map[string]int64{"proposed": 0, "collecting": 2, "committed": 0, "activated": 1, "aborted": 1})
	// Only open ceremonies count: c's reports are history.
	wantPoints(t, "factsync.ota.readiness", collect(t, reader, "factsync.ota.readiness", "status"),
		map[string]int64{"ready": 1, "not_ready": 1, "rejected": 1})
	wantPoints(t, "factsync.ota.protocol.active", collect(t, reader, "factsync.ota.protocol.active", "state"),
		map[string]int64{"": 3})
}

// Transitions count once per event folded, so a ceremony that passes
// through a state within one catch-up still counts it.
func TestTransitionsCountEachStateEntered(t *testing.T) {
	s, reader := newMetered(t)
	f := newFleet()
	l := NewLedger(f.trusted(t))
	prop := proposedEvent(proposal(l.Policy, "v2.0.0"), t0)
	evs := []events.OTAEvent{
		prop,
		approvedEvent(f.approvers[0], prop.ProposalBytes, t0),
		approvedEvent(f.approvers[1], prop.ProposalBytes, t0), // collecting
	}
	for _, p := range f.peers {
		evs = append(evs, readinessEvent(p, prop.ProposalBytes, events.OTAReady, t0)) // the third commits
	}
	evs = append(evs, readinessEvent(f.peers[0], prop.ProposalBytes, events.OTANotReady, t0)) // back to collecting
	for _, ev := range evs {
		next := mustApply(t, l, ev)
		s.metrics.transitions(context.Background(), l, next)
		l = next
	}
	wantPoints(t, "factsync.ota.transitions", collect(t, reader, "factsync.ota.transitions", "state"),
		map[string]int64{"proposed": 1, "collecting": 2, "committed": 1})
}

func TestMeshRequestsCarryErrorType(t *testing.T) {
	s, reader := newMetered(t)
	ctx := context.Background()
	s.metrics.meshRequest(ctx, events.OTAOpLog, nil)
	s.metrics.meshRequest(ctx, events.OTAOpLog, nil)
	s.metrics.meshRequest(ctx, events.OTAOpLog, events.Errorf(events.ReasonUnavailable, "partitioned"))
	s.metrics.meshRequest(ctx, events.OTAOpReady, errors.New("no reason"))
	wantPoints(t, "factsync.ota.mesh.requests", collect(t, reader, "factsync.ota.mesh.requests", "error.type"),
		map[string]int64{"": 2, "unavailable": 1, string(events.ReasonOf(errors.New("no reason"))): 1})
}
