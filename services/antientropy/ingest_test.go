package antientropy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// ingestFixture is a service that can ingest into an embedded server's
// INGRESS, and n facts, each written in a trace of its own (traces).
type ingestFixture struct {
	s      *Service
	js     jetstream.JetStream
	auth   events.AuthorityID
	token  []byte
	facts  []*events.Fact
	traces []*eventsv1.TraceContext
}

func newIngestFixture(tb testing.TB, n int) *ingestFixture {
	tb.Helper()
	h := bustest.Start(tb, bus.EmbeddedConfig{})
	if _, err := h.JS.CreateStream(context.Background(), events.IngressStream()); err != nil {
		tb.Fatal(err)
	}
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewNoopExporter())).Tracer("test")
	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	x := &ingestFixture{
		s:     &Service{env: &service.Env{JS: h.JS}, tracer: tracer},
		js:    h.JS,
		auth:  events.AuthorityIDOf(authPub),
		token: []byte("token"),
	}
	th, _ := hex.DecodeString(events.TokenHash(x.token))
	for i := range n {
		f, err := events.SignFact(authKey, &eventsv1.FactBody{
			AuthorityKey: authPub, TokenHash: th, Collection: "notes", Document: fmt.Sprint(i),
			Hlc: &eventsv1.HLC{WallMillis: uint64(time.Now().UnixMilli())},
			Op:  &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`{"n":1}`)}},
		})
		if err != nil {
			tb.Fatal(err)
		}
		ctx, span := tracer.Start(context.Background(), "write")
		x.facts, x.traces = append(x.facts, f), append(x.traces, bus.BodyTrace(ctx))
		span.End()
	}
	return x
}

// Received facts go into INGRESS as one message, in the session's trace,
// and each fact that carried a sampled trace goes on in it: its entry in
// the message's traces is an ingest span of that trace (facts of one trace
// share one), while the others' entries are empty.
func TestIngestContinuesEachFactsTrace(t *testing.T) {
	x := newIngestFixture(t, 4)
	spans := tracetest.NewInMemoryExporter()
	x.s.tracer = sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans)).Tracer("test")
	ctx, session := x.s.tracer.Start(context.Background(), "session")
	// facts 0 and 2 share a trace, 1 has its own, 3 has none.
	carried := []*eventsv1.TraceContext{x.traces[0], x.traces[1], x.traces[0]}
	if err := x.s.ingest(ctx, "peer", x.auth, x.facts, carried, [][]byte{x.token}); err != nil {
		t.Fatal(err)
	}
	session.End()

	st, err := x.js.Stream(ctx, events.StreamIngress)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetMsg(ctx, 2); err == nil {
		t.Fatal("the facts went into INGRESS as more than one message")
	}
	if got := trace.SpanContextFromContext(bus.ExtractTrace(context.Background(), m.Header)); got.SpanID() != session.SpanContext().SpanID() {
		t.Fatalf("the INGRESS message is in span %s, want the session's %s", got.SpanID(), session.SpanContext().SpanID())
	}
	var fb eventsv1.FactBatch
	if err := proto.Unmarshal(m.Data, &fb); err != nil || len(fb.Facts) != 4 || len(fb.Tokens) != 1 || len(fb.Traces) != 4 {
		t.Fatalf("INGRESS batch: %d facts, %d tokens, %d traces (%v); want 4, 1, 4", len(fb.Facts), len(fb.Tokens), len(fb.Traces), err)
	}
	ingestSpans := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans.GetSpans() {
		if s.Name == spanIngest {
			ingestSpans[s.SpanContext.SpanID()] = s
		}
	}
	if len(ingestSpans) != 2 {
		t.Fatalf("%d ingest spans, want one for each of the 2 traces", len(ingestSpans))
	}
	for i, tc := range fb.Traces {
		sc := trace.SpanContextFromContext(bus.ExtractBodyTrace(context.Background(), tc))
		if i == 3 {
			if sc.IsValid() {
				t.Errorf("fact 3 carried no trace but goes on in %v", sc)
			}
			continue
		}
		s, ok := ingestSpans[sc.SpanID()]
		want := trace.SpanContextFromContext(bus.ExtractBodyTrace(context.Background(), carried[i]))
		if !ok || s.Parent.SpanID() != want.SpanID() || sc.TraceID() != want.TraceID() {
			t.Errorf("fact %d goes on in %v, want an ingest span child of its carried %v", i, sc, want)
			continue
		}
		if len(s.Links) != 1 || s.Links[0].SpanContext.SpanID() != session.SpanContext().SpanID() {
			t.Errorf("fact %d's ingest span links %v, want the session", i, s.Links)
		}
	}
	if fb.Traces[0].GetTraceparent() != fb.Traces[2].GetTraceparent() {
		t.Error("facts 0 and 2 of one trace went on in different spans")
	}
}

// BenchmarkIngest is the cost of carrying each fact's trace across: a
// pulled batch of 200 facts goes into INGRESS (fsync before ack) with no
// trace of their own, or each in a sampled trace of its own (the worst
// case: a device that writes one fact at a time, every trace sampled),
// which adds a span and a trace context per fact.
func BenchmarkIngest(b *testing.B) {
	const n = 200
	for _, traced := range []bool{false, true} {
		b.Run(map[bool]string{false: "untraced", true: "trace per fact"}[traced], func(b *testing.B) {
			x := newIngestFixture(b, n)
			traces := x.traces
			if !traced {
				traces = nil
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := x.s.ingest(context.Background(), "peer", x.auth, x.facts, traces, [][]byte{x.token}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "facts/s")
		})
	}
}
