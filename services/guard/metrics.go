package guard

import (
	"context"
	"time"

	"github.com/factsync/factsync/events"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// metrics are the guard's instruments. kind is "fact" or "request".
type metrics struct {
	accepted metric.Int64Counter
	denied   metric.Int64Counter
	decision metric.Float64Histogram
}

func newMetrics(m metric.Meter) (*metrics, error) {
	if m == nil {
		m = noop.NewMeterProvider().Meter("guard")
	}
	accepted, err := m.Int64Counter("factsync.guard.accepted",
		metric.WithDescription("facts and requests the guard accepted"))
	if err != nil {
		return nil, err
	}
	denied, err := m.Int64Counter("factsync.guard.denied",
		metric.WithDescription("facts and requests the guard denied, by reason"))
	if err != nil {
		return nil, err
	}
	decision, err := m.Float64Histogram("factsync.guard.decision.duration",
		metric.WithDescription("time from receiving an INGRESS message or request to its decision being durable or answered"),
		metric.WithUnit("s"))
	if err != nil {
		return nil, err
	}
	return &metrics{accepted: accepted, denied: denied, decision: decision}, nil
}

func (m *metrics) record(ctx context.Context, kind string, accepted int, denials []events.Reason, took time.Duration) {
	kindAttr := attribute.String("kind", kind)
	if accepted > 0 {
		m.accepted.Add(ctx, int64(accepted), metric.WithAttributes(kindAttr))
	}
	for _, r := range denials {
		m.denied.Add(ctx, 1, metric.WithAttributes(kindAttr, attribute.String("reason", string(r))))
	}
	m.decision.Record(ctx, took.Seconds(), metric.WithAttributes(kindAttr))
}
