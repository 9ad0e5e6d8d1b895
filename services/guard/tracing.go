package guard

import (
	"context"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// decisionAttributes describe one INGRESS message's decision on its span:
// the authority, the accepted facts (with the collection and id of a
// single fact, the common case) and the reason codes of the denials, so a
// trace backend finds a fact's path by its id or a rejection by reason.
func decisionAttributes(subject string, v verdict) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		attribute.Int("factsync.accepted", len(v.accepted)),
		attribute.Int("factsync.denied", len(v.denials)),
	}
	if auth, err := events.ParseIngressFactSubject(subject); err == nil {
		attrs = append(attrs, events.AttrAuthority.String(string(auth)))
	}
	if len(v.accepted) == 1 {
		f := v.accepted[0]
		attrs = append(attrs, events.AttrCollection.String(f.Collection()), events.AttrFactID.String(f.ID.String()))
	}
	if len(v.accepted) > 0 {
		ids := make([]string, len(v.accepted))
		for i, f := range v.accepted {
			ids[i] = f.ID.String()
		}
		attrs = append(attrs, events.AttrFactIDs.StringSlice(ids))
	}
	if len(v.denials) > 0 {
		reasons := make([]string, len(v.denials))
		for i, d := range v.denials {
			reasons[i] = d.GetReason()
		}
		attrs = append(attrs, attribute.StringSlice("factsync.reasons", reasons))
		if len(v.denials) == 1 {
			attrs = append(attrs, events.AttrReason.String(reasons[0]))
		}
	}
	return attrs
}

// traceFacts continues the traces an INGRESS message's facts carry in its
// body (FactBatch.traces). A batch may hold facts of many traces:
// anti-entropy sends each fact in the trace it was written in, many to a
// message. For each such trace the guard opens a guard.decide span of its
// own, a child of the carried context linked to the message's span
// (msgCtx), describing the decision on that trace's facts. It returns the
// trace header (by hex FactID) that their JOURNAL or DENIED messages
// carry instead of the message's, and the spans, for the caller to end.
// Facts without a sampled trace of their own keep the message's.
func (g *running) traceFacts(ctx, msgCtx context.Context, subject string, v verdict) (map[string]nats.Header, []trace.Span) {
	if len(v.traces) == 0 {
		return nil, nil
	}
	type decided struct {
		fact   *events.Fact
		denial *eventsv1.Denial
		id     string
	}
	var all []decided
	for _, f := range v.accepted {
		all = append(all, decided{fact: f, id: f.ID.String()})
	}
	for _, d := range v.denials {
		all = append(all, decided{denial: d, id: d.GetFactId()})
	}
	bare := bus.WithoutSpan(ctx)
	groups := bus.GroupByTrace(len(all), func(i int) context.Context {
		return bus.ExtractBodyTrace(bare, v.traces[all[i].id])
	})
	headers := map[string]nats.Header{}
	var spans []trace.Span
	for _, grp := range groups {
		if grp.Context == nil {
			continue
		}
		var sub verdict
		for _, i := range grp.Items {
			if all[i].fact != nil {
				sub.accepted = append(sub.accepted, all[i].fact)
			} else {
				sub.denials = append(sub.denials, all[i].denial)
			}
		}
		sctx, span := g.tracer.Start(grp.Context, "guard.decide",
			trace.WithLinks(trace.LinkFromContext(msgCtx)),
			trace.WithAttributes(append(decisionAttributes(subject, sub), attribute.String("messaging.destination.name", subject))...))
		spans = append(spans, span)
		h := nats.Header{}
		bus.InjectTrace(sctx, h)
		for _, i := range grp.Items {
			headers[all[i].id] = h
		}
	}
	return headers, spans
}
