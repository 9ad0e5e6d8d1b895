package ops_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/natsbackend"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/services/receipts"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/telemetry"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// One fact written through the SDK on peer A is one trace, on A and on the
// peer B that anti-entropy carries it to: the application's span, the
// SDK's INGRESS publish, A's guard decision, A's journal fold and receipts
// append, A's anti-entropy span sending the fact (a fetch answered when B
// pulls, a push when A pushes), B's ingest into its own INGRESS, B's guard
// decision, journal fold and receipts append. Each hop is the child of
// the one before, linked by the traceparent in NATS headers and, between
// the peers, in the fact batch; each names the fact, and the anti-entropy
// hops name the other peer.
func TestOneFactIsOneTrace(t *testing.T) {
	for _, tc := range []struct {
		name string
		// initiator is the peer that syncs (the only one holding a sync
		// credential, so every session, on demand or automatic, goes
		// this way); transfer is the span A sends the fact under.
		initiator, transfer string
	}{
		{name: "B pulls", initiator: "B", transfer: "antientropy fetch"},
		{name: "A pushes", initiator: "A", transfer: "antientropy push"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spans := tracetest.NewInMemoryExporter()
			authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
			auth := events.AuthorityIDOf(authPub)
			keys, ids := mesh.NewPeers(2)
			hub, err := mesh.StartHub(mesh.HubConfig{Peers: ids})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(hub.Close)
			a := startTracedPeer(t, hub, 0, "A", keys[0], spans, authKey, tc.initiator == "A")
			b := startTracedPeer(t, hub, 1, "B", keys[1], spans, authKey, tc.initiator == "B")

			devPub, devKey, _ := ed25519.GenerateKey(rand.Reader)
			token, err := capability.Mint(authKey, devPub, []capability.Right{
				{Collection: capability.AnyCollection, Op: capability.OpRead},
				{Collection: capability.AnyCollection, Op: capability.OpWrite},
			}, time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			client := natsbackend.New(natsbackend.Options{Conn: bustest.Connect(t, a.url), TracerProvider: a.tel.TracerProvider})
			if err := client.Initialize(t.Context(), sdk.Config{AuthorityKey: authPub, DeviceKey: devKey, Token: token}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = client.Shutdown(context.Background()) })

			appCtx, app := a.tel.Tracer("app").Start(t.Context(), "app write")
			res, err := client.DocumentStore().Upsert(appCtx, "tasks", "t1", map[string]any{"title": "trace me"})
			app.End()
			if err != nil {
				t.Fatal(err)
			}
			traceID := app.SpanContext().TraceID()
			fact := res.Fact.String()

			// Sync on demand until a session moves the fact. The first
			// tries may find A not yet indexing it, or meet a session the
			// initiator's own triggers started (which may move it too).
			from, to := a, b
			if tc.initiator == "B" {
				from, to = b, a
			}
			arrived := func() bool { _, n := b.sync.Root(auth); return n == 1 }
			bustest.Eventually(t, 60*time.Second, func() bool {
				rep := from.syncNow(t, auth, to.id)
				return rep.Pulled+rep.Pushed > 0 || arrived()
			}, "a session to move the fact from A to B")
			bustest.Eventually(t, 30*time.Second, arrived, "B's guard to accept the fact")

			// The hops, each the child of the one before.
			chain := []hopSpan{
				{"A", "send fs.in", "A", "app write"},
				{"A", "guard.decide", "A", "send fs.in"},
				{"A", "journal fold", "A", "guard.decide"},
				{"A", "receipts append", "A", "guard.decide"},
				{"A", tc.transfer, "A", "guard.decide"},
				{"B", "antientropy ingest", "A", tc.transfer},
				{"B", "guard.decide", "B", "antientropy ingest"},
				{"B", "journal fold", "B", "guard.decide"},
				{"B", "receipts append", "B", "guard.decide"},
			}
			var inTrace map[string]tracetest.SpanStub
			var gap []string
			bustest.Eventually(t, 30*time.Second, func() bool {
				inTrace = map[string]tracetest.SpanStub{}
				for _, s := range spans.GetSpans() {
					if s.SpanContext.TraceID() == traceID {
						inTrace[s.SpanContext.SpanID().String()] = s
					}
				}
				gap = nil
				for _, hop := range chain {
					if !slices.ContainsFunc(slices.Collect(maps.Values(inTrace)), func(s tracetest.SpanStub) bool {
						p, ok := inTrace[s.Parent.SpanID().String()]
						return peerOf(s) == hop.peer && s.Name == hop.name && ok && peerOf(p) == hop.parentPeer && p.Name == hop.parent
					}) {
						gap = append(gap, hop.parentPeer+": "+hop.parent+" → "+hop.peer+": "+hop.name)
					}
				}
				return len(gap) == 0
			}, "the fact's trace lacks %v; it holds %v", lazy(func() string { return strings.Join(gap, ", ") }), lazy(func() string {
				var seen []string
				for _, s := range inTrace {
					seen = append(seen, peerOf(s)+": "+s.Name)
				}
				return strings.Join(seen, ", ")
			}))

			// The session is a trace of its own, on the initiator, naming
			// the other peer.
			sessionTraces := map[trace.TraceID]bool{}
			for _, s := range spans.GetSpans() {
				if s.Name == "antientropy session" && peerOf(s) == tc.initiator && attributes(s.Attributes)["factsync.peer"] == string(to.id) {
					sessionTraces[s.SpanContext.TraceID()] = true
				}
			}
			if len(sessionTraces) == 0 || sessionTraces[traceID] {
				t.Errorf("session traces %v: want at least one %s session naming peer %s, none in the fact's trace", sessionTraces, tc.initiator, to.id)
			}

			for _, s := range inTrace {
				if s.Name == "app write" {
					continue
				}
				if _, ok := inTrace[s.Parent.SpanID().String()]; !ok {
					t.Errorf("%s's span %q has a parent outside the fact's trace", peerOf(s), s.Name)
				}
				if !slices.ContainsFunc(chain, func(hop hopSpan) bool { return hop.name == s.Name }) {
					continue // e.g. the SDK's read of the document before the upsert
				}
				attrs := attributes(s.Attributes)
				if attrs["factsync.authority"] != string(auth) || !strings.Contains(attrs["factsync.fact.id"]+attrs["factsync.fact.ids"], fact) {
					t.Errorf("%s's span %q does not name the fact (authority %s, fact %s): %v", peerOf(s), s.Name, auth, fact, attrs)
				}
				if s.Name == "journal fold" && attrs["factsync.collection"] != "tasks" {
					t.Errorf("%s's fold span's collection: %v", peerOf(s), attrs)
				}
				// The anti-entropy hops name the other peer, and link the
				// session (or the session's request) they ran in.
				other := map[string]string{"A": string(b.id), "B": string(a.id)}[peerOf(s)]
				if strings.HasPrefix(s.Name, "antientropy ") {
					if attrs["factsync.peer"] != other {
						t.Errorf("%s's span %q names peer %q, want %s", peerOf(s), s.Name, attrs["factsync.peer"], other)
					}
					if len(s.Links) != 1 || !sessionTraces[s.Links[0].SpanContext.TraceID()] {
						t.Errorf("%s's span %q links %v, want one span of a session's trace", peerOf(s), s.Name, s.Links)
					}
				}
			}
		})
	}
}

// hopSpan is one hop of a fact's trace: a span's peer and name, and its
// parent's.
type hopSpan struct{ peer, name, parentPeer, parent string }

// tracedPeer is one site of the 2-peer stack: its own embedded server
// linked to the hub, the guard, journal, receipts and anti-entropy, and
// telemetry whose service.name is the peer's name.
type tracedPeer struct {
	name string
	id   events.PeerID
	url  string
	nc   *nats.Conn
	tel  *telemetry.Telemetry
	sync *antientropy.Service
}

// startTracedPeer starts peer i of hub, with key, exporting its spans to
// spans. It holds a sync credential for authKey's authority only when
// initiates is set, so only it starts sessions.
func startTracedPeer(t *testing.T, hub *mesh.Hub, i int, name string, key ed25519.PrivateKey, spans *tracetest.InMemoryExporter, authKey ed25519.PrivateKey, initiates bool) *tracedPeer {
	t.Helper()
	ns, err := hub.StartPeer(i, bus.EmbeddedConfig{StoreDir: t.TempDir(), LazySync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: name, SpanExporter: spans})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	pub := key.Public().(ed25519.PublicKey)
	creds := map[events.AuthorityID]antientropy.Credential{}
	if initiates {
		authPub := authKey.Public().(ed25519.PublicKey)
		token, err := capability.Mint(authKey, pub, []capability.Right{{Collection: capability.AnyCollection, Op: capability.OpSync}}, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		creds[events.AuthorityIDOf(authPub)] = antientropy.Credential{AuthorityKey: authPub, Token: token}
	}
	// Replies from the other peer cross the hub only to this peer's
	// private inbox.
	nc := bustest.Connect(t, ns.ClientURL(), nats.CustomInboxPrefix(hub.InboxPrefix(i)))
	p := &tracedPeer{name: name, id: events.PeerIDOf(pub), url: ns.ClientURL(), nc: nc, tel: tel}
	p.sync = antientropy.New(antientropy.Config{Credentials: creds, SyncInterval: -1, SketchSize: 4096})
	bustest.RunServices(t, runner.Config{
		Conn: p.nc, DataRoot: t.TempDir(), Telemetry: tel, Peer: p.id, PeerKey: key,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, guard.New(guard.Config{}), journal.New(journal.Config{}), receipts.New(receipts.Config{}), p.sync)
	return p
}

// syncNow asks the peer to sync auth with other now, as the CLI does.
func (p *tracedPeer) syncNow(t *testing.T, auth events.AuthorityID, other events.PeerID) antientropy.SyncReport {
	t.Helper()
	body, _ := json.Marshal(antientropy.SyncRequest{Peer: other})
	m, err := p.nc.Request(events.ServiceSubject(antientropy.Name, antientropy.OpSync, auth), body, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply antientropy.SyncReply
	if err := json.Unmarshal(m.Data, &reply); err != nil || len(reply.Sessions) != 1 {
		t.Fatalf("sync reply %s: %v", m.Data, err)
	}
	return reply.Sessions[0]
}

// peerOf names the peer whose telemetry exported s.
func peerOf(s tracetest.SpanStub) string {
	v, _ := s.Resource.Set().Value(semconv.ServiceNameKey)
	return v.AsString()
}

// lazy formats as what its func returns when a failure message is
// printed.
type lazy func() string

func (l lazy) String() string { return l() }

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
