package antientropy

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// metrics are the service's instruments: sessions by outcome, rounds,
// bytes each way, facts moved and the lag a session found.
type metrics struct {
	sessions metric.Int64Counter
	rounds   metric.Int64Counter
	bytes    metric.Int64Counter
	moved    metric.Int64Counter
	lag      metric.Int64Histogram
}

func newMetrics(m metric.Meter) (*metrics, error) {
	if m == nil {
		m = noop.Meter{}
	}
	var x metrics
	var err error
	if x.sessions, err = m.Int64Counter("factsync.antientropy.sessions", metric.WithDescription("sync sessions this peer initiated, by state and mode")); err != nil {
		return nil, err
	}
	if x.rounds, err = m.Int64Counter("factsync.antientropy.rounds", metric.WithDescription("reconciliation round trips")); err != nil {
		return nil, err
	}
	if x.bytes, err = m.Int64Counter("factsync.antientropy.bytes", metric.WithUnit("By"), metric.WithDescription("session bytes, by direction (out, in)")); err != nil {
		return nil, err
	}
	if x.moved, err = m.Int64Counter("factsync.antientropy.facts", metric.WithDescription("facts moved, by direction (pulled, pushed, pushed_in)")); err != nil {
		return nil, err
	}
	if x.lag, err = m.Int64Histogram("factsync.antientropy.lag", metric.WithDescription("facts this peer lacked when a session began")); err != nil {
		return nil, err
	}
	return &x, nil
}

// session records a finished session.
func (x *metrics) session(ctx context.Context, rep *SyncReport) {
	x.sessions.Add(ctx, 1, metric.WithAttributes(attribute.String("state", string(rep.State)), attribute.String("mode", rep.Mode)))
	x.rounds.Add(ctx, int64(rep.Rounds))
	x.bytes.Add(ctx, int64(rep.BytesOut), metric.WithAttributes(attribute.String("direction", "out")))
	x.bytes.Add(ctx, int64(rep.BytesIn), metric.WithAttributes(attribute.String("direction", "in")))
	x.facts(ctx, "pulled", rep.Pulled)
	x.facts(ctx, "pushed", rep.Pushed)
	if rep.State == StateCompleted {
		x.lag.Record(ctx, int64(rep.Lag))
	}
}

// facts counts facts moved one way.
func (x *metrics) facts(ctx context.Context, direction string, n int) {
	if n > 0 {
		x.moved.Add(ctx, int64(n), metric.WithAttributes(attribute.String("direction", direction)))
	}
}
