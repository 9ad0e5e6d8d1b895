package ota

import (
	"context"

	"github.com/factsync/factsync/events"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// ceremonyStates are the states factsync.ota.ceremonies reports, each one
// even at zero so that a dashboard shows a ceremony move between them.
var ceremonyStates = []events.OTAState{
	events.OTAStateProposed, events.OTAStateCollecting, events.OTAStateCommitted,
	events.OTAStateActivated, events.OTAStateAborted,
}

// readyStatuses are the statuses factsync.ota.readiness reports, each one
// even at zero.
var readyStatuses = []events.OTAReadyStatus{events.OTAReady, events.OTANotReady, events.OTARejected}

// metrics are the ota service's instruments. Every replica of a peer folds
// the same log, so its replicas report the same values: take the max
// across one peer's replicas, not the sum.
type metrics struct {
	meter metric.Meter
	// moves counts factsync.ota.transitions: a ceremony entering a state,
	// once per event folded. A restarted replica folds the log again from
	// the start and so resumes at the same total.
	moves metric.Int64Counter
	// requests counts factsync.ota.mesh.requests: what a follower sends
	// the coordinator (and the coordinator's notices), by op and
	// error.type.
	requests metric.Int64Counter
}

func newMetrics(m metric.Meter) (*metrics, error) {
	if m == nil {
		m = noop.NewMeterProvider().Meter(Name)
	}
	moves, err := m.Int64Counter("factsync.ota.transitions", metric.WithUnit("{transition}"),
		metric.WithDescription("OTA ceremonies entering a state, by the state entered"))
	if err != nil {
		return nil, err
	}
	requests, err := m.Int64Counter("factsync.ota.mesh.requests", metric.WithUnit("{request}"),
		metric.WithDescription("OTA requests this peer sent to the coordinator across the mesh, by operation and error type"))
	if err != nil {
		return nil, err
	}
	return &metrics{meter: m, moves: moves, requests: requests}, nil
}

// transitions counts the states the ceremonies entered from prev to next.
func (m *metrics) transitions(ctx context.Context, prev, next Ledger) {
	for id, c := range next.Ceremonies {
		if old, ok := prev.Ceremonies[id]; ok && old.State == c.State {
			continue
		}
		m.moves.Add(ctx, 1, metric.WithAttributes(attribute.String("state", string(c.State))))
	}
}

// meshRequest counts one request to another peer; error.type is its
// reason code when it failed, as OTel's semantic conventions name it.
func (m *metrics) meshRequest(ctx context.Context, op string, err error) {
	attrs := []attribute.KeyValue{attribute.String("op", op)}
	if err != nil {
		attrs = append(attrs, attribute.String("error.type", string(events.ReasonOf(err))))
	}
	m.requests.Add(ctx, 1, metric.WithAttributes(attrs...))
}

// observe reports the gauges read from the ledger: factsync.ota.ceremonies
// (ceremonies by state), factsync.ota.readiness (the latest readiness
// reports of open ceremonies, by status) and factsync.ota.protocol.active
// (the sync protocol version in force on this peer).
func (s *Service) observe() (metric.Registration, error) {
	m := s.metrics.meter
	ceremonies, err := m.Int64ObservableGauge("factsync.ota.ceremonies", metric.WithUnit("{ceremony}"),
		metric.WithDescription("OTA ceremonies by state"))
	if err != nil {
		return nil, err
	}
	readiness, err := m.Int64ObservableGauge("factsync.ota.readiness", metric.WithUnit("{peer}"),
		metric.WithDescription("peers' latest readiness reports on open OTA ceremonies, by status"))
	if err != nil {
		return nil, err
	}
	protocol, err := m.Int64ObservableGauge("factsync.ota.protocol.active",
		metric.WithDescription("the sync protocol version in force on this peer"))
	if err != nil {
		return nil, err
	}
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		states := map[events.OTAState]int64{}
		reports := map[events.OTAReadyStatus]int64{}
		s.mu.Lock()
		for _, c := range s.ledger.Ceremonies {
			states[c.State]++
			if !closed(c.State) {
				for _, r := range c.Readiness {
					reports[r.Status]++
				}
			}
		}
		active := s.ledger.Active.Protocol
		s.mu.Unlock()
		for _, state := range ceremonyStates {
			o.ObserveInt64(ceremonies, states[state], metric.WithAttributes(attribute.String("state", string(state))))
		}
		for _, status := range readyStatuses {
			o.ObserveInt64(readiness, reports[status], metric.WithAttributes(attribute.String("status", string(status))))
		}
		o.ObserveInt64(protocol, int64(active))
		return nil
	}, ceremonies, readiness, protocol)
}
