package ops_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/natsbackend"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/services/receipts"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/telemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// One fact written through the SDK is one trace: the application's span,
// the SDK's INGRESS publish, the guard's decision, the journal's fold and
// the receipts append, linked by the traceparent in NATS headers and
// carrying the fact's authority, collection and id.
func TestOneFactIsOneTrace(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{LazySync: true})
	spans := tracetest.NewInMemoryExporter()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "factsync-test", SpanExporter: spans})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	peerPub, peerKey, _ := ed25519.GenerateKey(rand.Reader)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := runner.Start(ctx, runner.Config{
		Conn: h.Conn, DataRoot: t.TempDir(), Telemetry: tel,
		Peer: events.PeerIDOf(peerPub), PeerKey: peerKey,
	}, guard.New(guard.Config{}), journal.New(journal.Config{}), receipts.New(receipts.Config{}))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			t.Errorf("services: %v", err)
		}
	})
	select {
	case <-r.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("services not ready: %+v", r.Status())
	}

	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	devPub, devKey, _ := ed25519.GenerateKey(rand.Reader)
	token, err := capability.Mint(authKey, devPub, []capability.Right{
		{Collection: capability.AnyCollection, Op: capability.OpRead},
		{Collection: capability.AnyCollection, Op: capability.OpWrite},
	}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	b := natsbackend.New(natsbackend.Options{Conn: bustest.Connect(t, h.URL()), TracerProvider: tel.TracerProvider})
	if err := b.Initialize(t.Context(), sdk.Config{AuthorityKey: authPub, DeviceKey: devKey, Token: token}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })

	appCtx, app := tel.Tracer("app").Start(t.Context(), "app write")
	res, err := b.DocumentStore().Upsert(appCtx, "tasks", "t1", map[string]any{"title": "trace me"})
	app.End()
	if err != nil {
		t.Fatal(err)
	}
	traceID := app.SpanContext().TraceID()
	factID := res.Fact.String()
	auth := string(events.AuthorityIDOf(authPub))

	// Every hop, in this trace, naming the fact.
	hops := map[string]bool{}
	want := []string{"app write", "send fs.in", "guard.decide", "journal fold", "receipts append"}
	deadline := time.Now().Add(20 * time.Second)
	for len(hops) < len(want) {
		if time.Now().After(deadline) {
			var seen []string
			for _, s := range spans.GetSpans() {
				seen = append(seen, s.Name)
			}
			t.Fatalf("hops %v of %v in the fact's trace; spans seen: %v", hops, want, seen)
		}
		for _, s := range spans.GetSpans() {
			if s.SpanContext.TraceID() != traceID {
				continue
			}
			for _, name := range want {
				if s.Name != name || name == "app write" {
					continue
				}
				attrs := attributes(s.Attributes)
				if attrs["factsync.authority"] != auth || !strings.Contains(attrs["factsync.fact.id"]+attrs["factsync.fact.ids"], factID) {
					t.Fatalf("span %q does not name the fact (authority %s, fact %s): %v", s.Name, auth, factID, attrs)
				}
				if name == "journal fold" && attrs["factsync.collection"] != "tasks" {
					t.Fatalf("fold span's collection: %v", attrs)
				}
				hops[name] = true
			}
			if s.Name == "app write" {
				hops["app write"] = true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The hops form one chain: each span's parent is in the trace.
	inTrace := map[string]bool{}
	for _, s := range spans.GetSpans() {
		if s.SpanContext.TraceID() == traceID {
			inTrace[s.SpanContext.SpanID().String()] = true
		}
	}
	for _, s := range spans.GetSpans() {
		if s.SpanContext.TraceID() == traceID && s.Name != "app write" && !inTrace[s.Parent.SpanID().String()] {
			t.Errorf("span %q has a parent outside the trace", s.Name)
		}
	}
}

// attributes renders span attributes as strings (slices joined by commas).
func attributes(kvs []attribute.KeyValue) map[string]string {
	out := map[string]string{}
	for _, kv := range kvs {
		if kv.Value.Type() == attribute.STRINGSLICE {
			out[string(kv.Key)] = strings.Join(kv.Value.AsStringSlice(), ",")
			continue
		}
		out[string(kv.Key)] = kv.Value.String()
	}
	return out
}
