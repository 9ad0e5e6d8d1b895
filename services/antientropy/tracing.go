package antientropy

import (
	"context"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// A session is per peer and authority, but a trace is per fact: a fact
// that another peer pulls or is pushed continues the trace it was written
// in (docs/antientropy.md, "Tracing"). The holder reads each fact back
// from JOURNAL with the trace context the guard stored on it, continues
// that trace with a fetch or push span, and sends the span's context with
// the fact (eventsv1.FactBatch.Traces). The receiver continues it again
// with an ingest span and passes that span's context on in the batch it
// publishes into INGRESS, where its guard decides each trace's facts under
// a span of that trace; so its JOURNAL, its journal and everything after
// them join the fact's trace. Every per-fact span links the session span
// (or the request it serves), which is where the session's own trace goes
// on.

// The span names of anti-entropy.
const (
	// spanSession is one session, initiator side.
	spanSession = "antientropy session"
	// spanFetch continues a trace whose facts the responder sends in
	// answer to a fetch; spanPush one whose facts the initiator pushes.
	spanFetch = "antientropy fetch"
	spanPush  = "antientropy push"
	// spanIngest publishes facts of one trace, received from a peer, into
	// local INGRESS.
	spanIngest = "antientropy ingest"
)

// storedFact is a fact read back from JOURNAL with the headers it was
// stored with (the guard's trace context among them).
type storedFact struct {
	fact   *events.Fact
	header nats.Header
}

// traceAt returns the trace context batch carries for fact i, or nil.
func traceAt(batch *eventsv1.FactBatch, i int) *eventsv1.TraceContext {
	if i < len(batch.GetTraces()) {
		return batch.GetTraces()[i]
	}
	return nil
}

// traceOutgoing continues, for every sampled trace the facts were stored
// with, that trace with a span named name (spanFetch or spanPush) towards
// peer, and sends its context beside the facts (continueTraces). The
// returned func ends the spans.
func (s *Service) traceOutgoing(ctx context.Context, name string, peer events.PeerID, auth events.AuthorityID, batch *eventsv1.FactBatch, stored []storedFact) (end func(error)) {
	facts := make([]*events.Fact, len(stored))
	for i, sf := range stored {
		facts[i] = sf.fact
	}
	bare := bus.WithoutSpan(ctx)
	return s.continueTraces(ctx, name, peer, auth, batch, facts, func(i int) context.Context {
		return bus.ExtractTrace(bare, stored[i].header)
	})
}

// ingest publishes facts received from peer, with the tokens they cite,
// into this peer's INGRESS as one batch, where its guard checks each as
// it would a client's. For every trace the facts carried (traces[i]
// belongs to facts[i]) an ingest span continues that trace, and its
// context goes on with the facts in the batch (continueTraces), for the
// guard to decide them in it. The message itself carries ctx's trace.
func (s *Service) ingest(ctx context.Context, peer events.PeerID, auth events.AuthorityID, facts []*events.Fact, traces []*eventsv1.TraceContext, tokens [][]byte) (err error) {
	batch := &eventsv1.FactBatch{Tokens: tokens}
	for _, f := range facts {
		batch.Facts = append(batch.Facts, f.Proto())
	}
	subject := events.IngressFactSubject(auth)
	bare := bus.WithoutSpan(ctx)
	end := s.continueTraces(ctx, spanIngest, peer, auth, batch, facts, func(i int) context.Context {
		if i < len(traces) {
			return bus.ExtractBodyTrace(bare, traces[i])
		}
		return bare
	}, attribute.String("messaging.system", "nats"),
		attribute.String("messaging.operation.type", "send"),
		attribute.String("messaging.destination.name", subject))
	defer func() { end(err) }()
	m := nats.NewMsg(subject)
	if m.Data, err = proto.Marshal(batch); err != nil {
		return events.Wrap(events.ReasonInternal, err, "encode fact batch")
	}
	bus.InjectTrace(ctx, m.Header)
	if _, err = s.env.JS.PublishMsg(ctx, m); err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "publish to INGRESS")
	}
	return nil
}

// continueTraces starts, for each sampled trace among the batch's facts
// (contextOf(i) carries fact i's, extracted onto bus.WithoutSpan), one
// producer span named name in that trace, linked to ctx's span (the
// session, or the request being answered) and describing the trace's
// facts and peer, and puts the span's context beside those facts in
// batch.Traces. Facts without a sampled trace get an empty entry; a batch
// with none keeps no Traces at all. The returned func ends the spans,
// recording err.
func (s *Service) continueTraces(ctx context.Context, name string, peer events.PeerID, auth events.AuthorityID, batch *eventsv1.FactBatch, facts []*events.Fact, contextOf func(i int) context.Context, attrs ...attribute.KeyValue) (end func(error)) {
	var spans []trace.Span
	for _, g := range bus.GroupByTrace(len(facts), contextOf) {
		if g.Context == nil {
			continue
		}
		group := make([]*events.Fact, len(g.Items))
		for i, j := range g.Items {
			group[i] = facts[j]
		}
		sctx, span := s.tracer.Start(g.Context, name,
			trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithLinks(trace.LinkFromContext(ctx)),
			trace.WithAttributes(append(transferAttributes(peer, auth, group), attrs...)...))
		spans = append(spans, span)
		if batch.Traces == nil {
			batch.Traces = make([]*eventsv1.TraceContext, len(facts))
			for i := range batch.Traces {
				batch.Traces[i] = &eventsv1.TraceContext{}
			}
		}
		tc := bus.BodyTrace(sctx)
		for _, j := range g.Items {
			batch.Traces[j] = tc
		}
	}
	return func(err error) {
		for _, span := range spans {
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}
	}
}

// transferAttributes describe facts moving between this peer and peer:
// the authority and the peer, and the fact's own attributes for one fact
// or the ids of several.
func transferAttributes(peer events.PeerID, auth events.AuthorityID, facts []*events.Fact) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		events.AttrPeer.String(string(peer)),
		attribute.Int("messaging.batch.message_count", len(facts)),
	}
	if len(facts) == 1 {
		return append(attrs, events.FactAttributes(facts[0])...)
	}
	ids := make([]string, len(facts))
	for i, f := range facts {
		ids[i] = f.ID.String()
	}
	return append(attrs, events.AttrAuthority.String(string(auth)), events.AttrFactIDs.StringSlice(ids))
}
