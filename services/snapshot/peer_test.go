package snapshot

import (
	"context"
	"crypto/ed25519"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// peer is one site: its own embedded server, guard and snapshot service.
type peer struct {
	t    testing.TB
	h    *bustest.Harness
	id   events.PeerID
	key  ed25519.PrivateKey
	snap *Service
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startPeer runs a guard and a snapshot service with cfg on a new server.
func startPeer(t testing.TB, rng *rand.Rand, clk clock.Clock, cfg Config) *peer {
	t.Helper()
	h := bustest.Start(t, bus.EmbeddedConfig{})
	_, key := seededKey(rng)
	p := &peer{t: t, h: h, id: events.PeerIDOf(key.Public().(ed25519.PublicKey)), key: key, snap: New(cfg)}
	g := guard.New(guard.Config{})
	if err := bus.Provision(testCtx(t), h.JS, append(g.Streams(), p.snap.Streams()...)...); err != nil {
		t.Fatal(err)
	}
	p.run(g, clk)
	p.run(p.snap, clk)
	return p
}

// run starts svc on the peer and waits until it is ready; the test's
// cleanup stops it and waits for Run to return.
func (p *peer) run(svc service.Service, clk clock.Clock) {
	p.t.Helper()
	p.t.Cleanup(p.start(svc, clk, p.t.TempDir()))
}

// start starts svc on the peer with its data in dataDir, waits until it is
// ready, and returns what stops it and checks that Run returned nil.
func (p *peer) start(svc service.Service, clk clock.Clock, dataDir string) (stop func()) {
	t := p.t
	t.Helper()
	if err := bus.Provision(testCtx(t), p.h.JS, svc.Streams()...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	env := &service.Env{
		Conn: p.h.Conn, JS: p.h.JS, Clock: clk,
		Log:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Peer: p.id, PeerKey: p.key, DataDir: dataDir,
		Ready: func() { close(ready) },
	}
	go func() { done <- svc.Run(ctx, env) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("%s stopped before ready: %v", svc.Name(), err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("%s not ready within 30s", svc.Name())
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s Run: %v", svc.Name(), err)
			}
		})
	}
}

// ingest publishes facts to the peer's INGRESS and waits until JOURNAL
// holds them all.
func (p *peer) ingest(w *writer, facts []*events.Fact) {
	t := p.t
	t.Helper()
	ctx := testCtx(t)
	before := p.journalFacts(w.auth())
	for i := 0; i < len(facts); i += 500 {
		fb := &eventsv1.FactBatch{Tokens: [][]byte{w.token}}
		for _, f := range facts[i:min(i+500, len(facts))] {
			fb.Facts = append(fb.Facts, f.Proto())
		}
		data, _ := proto.Marshal(fb)
		if _, err := p.h.JS.Publish(ctx, events.IngressFactSubject(w.auth()), data); err != nil {
			t.Fatal(err)
		}
	}
	want := before + uint64(len(facts))
	bustest.Eventually(t, 30*time.Second, func() bool { return p.journalFacts(w.auth()) >= want }, "JOURNAL holds %d facts", want)
}

// journalFacts counts the fact messages of auth in JOURNAL.
func (p *peer) journalFacts(auth events.AuthorityID) uint64 {
	p.t.Helper()
	s, err := p.h.JS.Stream(testCtx(p.t), events.StreamJournal)
	if err != nil {
		p.t.Fatal(err)
	}
	info, err := s.Info(testCtx(p.t), jetstream.WithSubjectFilter(events.JournalAuthorityFilter(auth)))
	if err != nil {
		p.t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// view folds the peer's JOURNAL for auth: its documents and its
// anti-entropy index, as a journal and anti-entropy would hold them.
type view struct {
	state *fold.State
	index *negentropy.Index
	facts map[events.FactID]*events.Fact
}

func (p *peer) view(auth events.AuthorityID) view {
	p.t.Helper()
	v := view{state: fold.New(), index: &negentropy.Index{}, facts: map[events.FactID]*events.Fact{}}
	_, err := ScanJournal(testCtx(p.t), p.h.JS, auth, func(f *events.Fact, _ uint64) error {
		v.state.Apply(f)
		v.index.Insert(ItemOf(f))
		v.facts[f.ID] = f
		return nil
	}, func([]byte) {})
	if err != nil {
		p.t.Fatal(err)
	}
	return v
}

// askPeers is an Asker that reaches the approvers' services in process.
func askPeers(peers ...*peer) Asker {
	return func(ctx context.Context, id events.PeerID, _ events.AuthorityID, manifest []byte, _ Credentials) (events.SnapshotSignature, error) {
		for _, p := range peers {
			if p.id == id {
				return p.snap.Approve(ctx, manifest)
			}
		}
		return events.SnapshotSignature{}, events.Errorf(events.ReasonNotFound, "no peer %s", id)
	}
}

func (w *writer) creds() Credentials { return Credentials{Token: w.token, AuthorityKey: w.authPub} }
