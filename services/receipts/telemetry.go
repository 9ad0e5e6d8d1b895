package receipts

import (
	"context"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// appendSpans starts one span per fact of a batch, each continuing the
// trace the guard put on its JOURNAL message; end them with endSpans once
// the batch is durable in the log. Every replica appends to its own copy
// of the log, so each adds its span to the fact's trace.
func (r *run) appendSpans(ctx context.Context, msgs []jetstream.Msg, leaves []Leaf) []trace.Span {
	tracer := r.env.Tracer
	if tracer == nil {
		tracer = tracenoop.NewTracerProvider().Tracer(Name)
	}
	spans := make([]trace.Span, len(leaves))
	for i, leaf := range leaves {
		_, spans[i] = tracer.Start(bus.ExtractTrace(ctx, msgs[i].Headers()), "receipts append",
			trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(events.AttrAuthority.String(string(leaf.Authority)), events.AttrFactID.String(leaf.Fact.String()),
				events.AttrPeer.String(string(r.peer))))
	}
	return spans
}

func endSpans(spans []trace.Span, err error) {
	for _, span := range spans {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

// observe reports, until ctx ends, factsync.receipts.lag (the facts
// appended to the log that no signed checkpoint covers yet, so that have
// no receipt) and factsync.receipts.writer (1 on the replica that holds
// the writer lease, 0 on standbys).
func (r *run) observe(ctx context.Context) error {
	meter := r.env.Meter
	if meter == nil {
		return nil
	}
	lag, err := meter.Int64ObservableGauge("factsync.receipts.lag", metric.WithUnit("{fact}"),
		metric.WithDescription("facts appended to the receipts log and not yet covered by a signed checkpoint"))
	if err != nil {
		return err
	}
	active, err := meter.Int64ObservableGauge("factsync.receipts.writer",
		metric.WithDescription("1 on the replica that holds the writer lease and signs checkpoints, 0 on standbys"))
	if err != nil {
		return err
	}
	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		size, _ := r.log.Size()
		if last := r.log.LastCheckpoint(); last != nil {
			size -= last.Size
		}
		peer := metric.WithAttributes(attribute.String("peer", string(r.peer)))
		o.ObserveInt64(lag, size, peer)
		var writing int64
		if r.active.Load() {
			writing = 1
		}
		o.ObserveInt64(active, writing, peer)
		return nil
	}, lag, active)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return reg.Unregister()
}
