package ota

import (
	"context"

	"github.com/factsync/factsync/events"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ceremonyStates are the states factsync.ota.ceremonies reports, each one
// even at zero so that a dashboard shows a ceremony move between them.
var ceremonyStates = []events.OTAState{
	events.OTAStateProposed, events.OTAStateCollecting, events.OTAStateCommitted,
	events.OTAStateActivated, events.OTAStateAborted,
}

// observeCeremonies reports factsync.ota.ceremonies: how many ceremonies
// are in each state, as this replica's ledger has folded the OTA stream.
// Every replica folds the whole stream, so they all report the same
// counts; take the max across replicas, not the sum.
func (s *Service) observeCeremonies(meter metric.Meter) (metric.Registration, error) {
	gauge, err := meter.Int64ObservableGauge("factsync.ota.ceremonies", metric.WithUnit("{ceremony}"),
		metric.WithDescription("OTA ceremonies by state"))
	if err != nil {
		return nil, err
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		counts := map[events.OTAState]int64{}
		s.mu.Lock()
		for _, c := range s.ledger.Ceremonies {
			counts[c.State]++
		}
		s.mu.Unlock()
		for _, state := range ceremonyStates {
			o.ObserveInt64(gauge, counts[state], metric.WithAttributes(attribute.String("state", string(state))))
		}
		return nil
	}, gauge)
}
