package guard

import (
	"context"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// One INGRESS message may carry facts of many traces (FactBatch.traces, as
// anti-entropy sends them): each decided fact's JOURNAL or DENIED message
// goes on in the fact's own trace, and a fact without one, or with an
// unsampled one, in the message's. The guard runs without a tracer here,
// so the contexts pass through unchanged.
func TestFactsOfManyTracesInOneMessage(t *testing.T) {
	g := startGuard(t, Config{})
	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	start := func(sampler sdktrace.Sampler) (context.Context, trace.TraceID) {
		ctx, span := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler)).Tracer("t").Start(context.Background(), "write")
		span.End()
		return ctx, span.SpanContext().TraceID()
	}
	msgCtx, msgTrace := start(sdktrace.AlwaysSample())
	ctx1, trace1 := start(sdktrace.AlwaysSample())
	ctx2, trace2 := start(sdktrace.AlwaysSample())
	unsampledCtx, _ := start(sdktrace.NeverSample())

	own := d.fact(t, "notes", "own", d.token)
	future := d.factAt(t, "notes", "future", d.token, uint64(testNow.Add(DefaultMaxClockSkew+time.Second).UnixMilli()))
	none := d.fact(t, "notes", "none", d.token)
	unsampled := d.fact(t, "notes", "unsampled", d.token)
	fb := &eventsv1.FactBatch{Tokens: [][]byte{d.token}, Traces: []*eventsv1.TraceContext{
		bus.BodyTrace(ctx1), bus.BodyTrace(ctx2), {}, bus.BodyTrace(unsampledCtx),
	}}
	for _, f := range []*events.Fact{own, future, none, unsampled} {
		fb.Facts = append(fb.Facts, f.Proto())
	}
	m := nats.NewMsg(events.IngressFactSubject(d.auth()))
	m.Data, _ = proto.Marshal(fb)
	bus.InjectTrace(msgCtx, m.Header)
	if _, err := g.h.JS.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}

	eventually(t, 20*time.Second, "the accepted facts in JOURNAL and the denial in DENIED", func() bool {
		return streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalPrefix+".>") == 3 &&
			streamMsgs(t, g.h.JS, events.StreamDenied, events.DeniedPrefix+".>") == 1
	})
	traceOf := func(h nats.Header) trace.TraceID {
		return trace.SpanContextFromContext(bus.ExtractTrace(context.Background(), h)).TraceID()
	}
	want := map[string]trace.TraceID{own.ID.String(): trace1, none.ID.String(): msgTrace, unsampled.ID.String(): msgTrace}
	for _, jm := range readStream(t, g.h.JS, events.StreamJournal, events.JournalPrefix+".>") {
		id := jm.Headers().Get(events.HeaderMsgID)
		if got := traceOf(jm.Headers()); got != want[id] {
			t.Errorf("JOURNAL holds fact %s in trace %s, want %s", id, got, want[id])
		}
	}
	dm := readStream(t, g.h.JS, events.StreamDenied, events.DeniedPrefix+".>")[0]
	var den eventsv1.Denial
	if err := proto.Unmarshal(dm.Data(), &den); err != nil || den.GetFactId() != future.ID.String() {
		t.Fatalf("DENIED holds %v (%v), want the future fact's denial", &den, err)
	}
	if got := traceOf(dm.Headers()); got != trace2 {
		t.Errorf("DENIED holds the denial in trace %s, want the fact's own %s", got, trace2)
	}
}
