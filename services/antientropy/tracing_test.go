package antientropy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// Facts pushed in one batch keep their own traces: each lands in JOURNAL
// under the trace it was pushed with (facts of one trace together); a
// fact with an unsampled or no context, and a whole batch from a peer
// that predates FactBatch.Traces, is still accepted, under no trace of
// its own. A fetch then sends each fact's stored trace along with it.
// The peer runs without a tracer, so the contexts pass through unchanged.
func TestFactsKeepTheirTracesAcrossPushAndFetch(t *testing.T) {
	p := startPeer(t)
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	var facts []*events.Fact
	for i := range 6 {
		facts = append(facts, d.fact(t, fmt.Sprintf("d%d", i), i))
	}
	traced := func(sampler sdktrace.Sampler) (trace.TraceID, *eventsv1.TraceContext) {
		ctx, span := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler)).Tracer("writer").Start(context.Background(), "write")
		defer span.End()
		return span.SpanContext().TraceID(), bus.BodyTrace(ctx)
	}
	t1, tc1 := traced(sdktrace.AlwaysSample())
	t2, tc2 := traced(sdktrace.AlwaysSample())
	_, unsampled := traced(sdktrace.NeverSample())
	if unsampled == nil {
		t.Fatal("test premise: an unsampled span still has a context to carry")
	}

	session := p.open(t, d, antientropy.ModeNegentropy)
	push := func(batch *eventsv1.FactBatch) {
		t.Helper()
		body, _ := proto.Marshal(batch)
		reply := p.ask(t, d, d.token, antientropy.OpPush, body, session)
		var pr antientropy.PushReply
		if r := reply.Header.Get(events.HeaderReason); r != "" || json.Unmarshal(reply.Data, &pr) != nil || pr.Facts != len(batch.Facts) {
			t.Fatalf("push: reason %q, reply %s", r, reply.Data)
		}
	}
	// facts 0 and 1 in trace 1, 2 in trace 2, 3 unsampled, 4 beyond the
	// list of traces; 5 from an old peer, with no traces at all.
	batch := &eventsv1.FactBatch{Tokens: [][]byte{d.token}, Traces: []*eventsv1.TraceContext{tc1, tc1, tc2, unsampled}}
	for _, f := range facts[:5] {
		batch.Facts = append(batch.Facts, f.Proto())
	}
	push(batch)
	push(&eventsv1.FactBatch{Tokens: [][]byte{d.token}, Facts: []*eventsv1.SignedFact{facts[5].Proto()}})
	want := []trace.TraceID{t1, t1, t2, {}, {}, {}}

	ctx := context.Background()
	stored := map[events.FactID]trace.TraceID{}
	bustest.Eventually(t, 30*time.Second, func() bool {
		st, err := p.h.JS.Stream(ctx, events.StreamJournal)
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		if err != nil {
			return false
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			if f, err := events.DecodeFact(m.Data); err == nil {
				stored[f.ID] = trace.SpanContextFromContext(bus.ExtractTrace(ctx, m.Header)).TraceID()
			}
		}
		return len(stored) == len(facts)
	}, "the %d pushed facts in JOURNAL", len(facts))
	for i, f := range facts {
		if stored[f.ID] != want[i] {
			t.Errorf("fact %d is stored in trace %s, want %s", i, stored[f.ID], want[i])
		}
	}

	// Fetch them back: each fact comes with the trace it is stored in.
	var fetched eventsv1.FactBatch
	bustest.Eventually(t, 30*time.Second, func() bool {
		ids := make([]string, len(facts))
		for i, f := range facts {
			ids[i] = f.ID.String()
		}
		body, _ := json.Marshal(antientropy.FetchRequest{Session: session, IDs: ids})
		reply := p.ask(t, d, d.token, antientropy.OpFetch, body)
		return reply.Header.Get(events.HeaderReason) == "" && proto.Unmarshal(reply.Data, &fetched) == nil
	}, "the responder to index the pushed facts")
	if len(fetched.Traces) != len(fetched.Facts) {
		t.Fatalf("fetch carried %d traces for %d facts", len(fetched.Traces), len(fetched.Facts))
	}
	for i := range fetched.Facts {
		got := trace.SpanContextFromContext(bus.ExtractBodyTrace(ctx, fetched.Traces[i])).TraceID()
		if got != want[i] {
			t.Errorf("fetched fact %d carries trace %s, want %s", i, got, want[i])
		}
	}
}
