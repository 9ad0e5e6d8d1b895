package receipts

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// peer is one running receipts service on an embedded server.
type peer struct {
	h     *bustest.Harness
	key   ed25519.PrivateKey
	clock *clock.Fake
	dir   string
	done  chan error
	stop  context.CancelFunc
	meter *sdkmetric.ManualReader
	logs  *syncBuffer // what the service logged
}

// syncBuffer is a bytes.Buffer a service may log to while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startServer(t *testing.T) *bustest.Harness {
	t.Helper()
	h := bustest.Start(t, bus.EmbeddedConfig{LazySync: true})
	if err := bus.Provision(context.Background(), h.JS, events.JournalStream(), events.ReceiptsStream()); err != nil {
		t.Fatal(err)
	}
	return h
}

// start runs svc for key on h with state in dir, and waits until it is ready.
func start(t *testing.T, h *bustest.Harness, key ed25519.PrivateKey, dir string, svc *Service) *peer {
	t.Helper()
	p := &peer{h: h, key: key, clock: clock.NewFake(time.Unix(1_700_000_000, 0)), dir: dir, done: make(chan error, 1), meter: sdkmetric.NewManualReader(), logs: &syncBuffer{}}
	ready := make(chan struct{})
	env := &service.Env{
		Conn: h.Conn, JS: h.JS, Clock: p.clock,
		Meter:   sdkmetric.NewMeterProvider(sdkmetric.WithReader(p.meter)).Meter(Name),
		Peer:    events.PeerIDOf(key.Public().(ed25519.PublicKey)),
		PeerKey: key, DataDir: dir,
		Log:   slog.New(slog.NewTextHandler(p.logs, nil)),
		Ready: func() { close(ready) },
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	go func() { p.done <- svc.Run(ctx, env) }()
	t.Cleanup(func() { cancel(); <-p.done })
	select {
	case <-ready:
	case err := <-p.done:
		t.Fatalf("service stopped before it was ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("service not ready within 10s")
	}
	return p
}

func (p *peer) pub() ed25519.PublicKey { return p.key.Public().(ed25519.PublicKey) }
func (p *peer) id() events.PeerID      { return events.PeerIDOf(p.pub()) }

// halt stops the service and returns what Run returned.
func (p *peer) halt(t *testing.T) error {
	t.Helper()
	p.stop()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("service did not stop within 10s")
		return nil
	}
}

// eventually polls cond until it returns nil, failing the test after 15s.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// facts signs n facts of one authority, different for each seed.
func facts(t *testing.T, authority ed25519.PrivateKey, seed string, n int) []*events.Fact {
	t.Helper()
	device := testKey("device")
	out := make([]*events.Fact, n)
	for i := range out {
		f, err := events.SignFact(device, &eventsv1.FactBody{
			AuthorityKey: authority.Public().(ed25519.PublicKey),
			TokenHash:    make([]byte, 32),
			Collection:   "notes",
			Document:     fmt.Sprintf("%s-%d", seed, i),
			Hlc:          &eventsv1.HLC{WallMillis: uint64(1_700_000_000_000 + i)},
			Op:           &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`{"n":1}`)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = f
	}
	return out
}

// journal publishes facts to JOURNAL as the guard does.
func journal(t *testing.T, js jetstream.JetStream, fs []*events.Fact) {
	t.Helper()
	for _, f := range fs {
		if _, err := js.Publish(context.Background(), events.JournalSubject(f.Authority, f.Collection()), f.Marshal(), jetstream.WithMsgID(f.ID.String())); err != nil {
			t.Fatal(err)
		}
	}
}

func request(nc *nats.Conn, op string, auth events.AuthorityID, body any) ([]byte, error) {
	b, _ := json.Marshal(body)
	m, err := nc.Request(events.ServiceSubject(Name, op, auth), b, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if e := events.DecodeError(m.Data); e != nil {
		return nil, e
	}
	return m.Data, nil
}

// receipt fetches the receipt of f, moving the peer's clock on so that a
// checkpoint covers it.
func (p *peer) receipt(t *testing.T, f *events.Fact) []byte {
	t.Helper()
	var r []byte
	eventually(t, "receipt of "+f.ID.String(), func() (err error) {
		p.clock.Advance(time.Second)
		r, err = request(p.h.Conn, OpGet, f.Authority, GetRequest{FactID: f.ID.String()})
		return err
	})
	return r
}

// checkpointOf waits until the peer has signed a checkpoint of size leaves.
func (p *peer) checkpointOf(t *testing.T, size int64) []byte {
	t.Helper()
	var cp []byte
	eventually(t, fmt.Sprintf("checkpoint of %d leaves", size), func() error {
		p.clock.Advance(time.Second)
		raw, err := request(p.h.Conn, OpCheckpoint, testAuthority, struct{}{})
		if err != nil {
			return err
		}
		var reply CheckpointReply
		if err := json.Unmarshal(raw, &reply); err != nil {
			return err
		}
		c, err := OpenCheckpoint([]byte(reply.Checkpoint), p.pub())
		if err != nil {
			return err
		}
		if c.Size != size {
			return fmt.Errorf("checkpoint has %d leaves", c.Size)
		}
		cp = []byte(reply.Checkpoint)
		return nil
	})
	return cp
}

func TestEndToEndReceiptVerifiesOffline(t *testing.T) {
	h := startServer(t)
	p := start(t, h, testKey("peer"), t.TempDir(), New(Config{}))
	author := testKey("authority")
	fs := facts(t, author, "e2e", 25)
	journal(t, h.JS, fs)

	for _, f := range []*events.Fact{fs[0], fs[24]} {
		raw := p.receipt(t, f)
		if err := VerifyReceipt(raw, p.pub()); err != nil {
			t.Fatalf("receipt does not verify offline: %v\n%s", err, raw)
		}
		if err := VerifyReceipt(raw, testKey("someone else").Public().(ed25519.PublicKey)); !events.IsReason(err, events.ReasonBadProof) {
			t.Fatalf("receipt verifies under another peer's key: %v", err)
		}
	}
	other := events.AuthorityIDOf(testKey("other authority").Public().(ed25519.PublicKey))
	if _, err := request(h.Conn, OpGet, other, GetRequest{FactID: fs[0].ID.String()}); !events.IsReason(err, events.ReasonNotFound) {
		t.Fatalf("receipt asked for under another authority: %v", err)
	}
	if _, err := request(h.Conn, OpGet, fs[0].Authority, GetRequest{FactID: "nope"}); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("malformed fact id: %v", err)
	}

	// Checkpoints are published to RECEIPTS.
	cp := p.checkpointOf(t, 25)
	msg, err := h.JS.Stream(context.Background(), events.StreamReceipts)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "checkpoint on RECEIPTS", func() error {
		m, err := msg.GetLastMsgForSubject(context.Background(), events.CheckpointSubject(p.id()))
		if err != nil {
			return err
		}
		if string(m.Data) != string(cp) {
			return fmt.Errorf("last published checkpoint is %q", m.Data)
		}
		return nil
	})
}

func TestRestartAndCrashMidAppendNeverRepeatOrSkip(t *testing.T) {
	h := startServer(t)
	key, dir := testKey("peer"), t.TempDir()
	cfg := Config{}
	author := testKey("authority")
	first, second, third := facts(t, author, "a", 5), facts(t, author, "b", 5), facts(t, author, "c", 3)

	// Run 1 appends the first facts, then crashes in the middle of the
	// sync before the next checkpoint: the leaves and hashes appended
	// since the first are on disk, the tree file that commits them is not.
	crashing := New(cfg)
	crash := errors.New("simulated crash between storing leaves and storing the tree size")
	var armed atomic.Bool
	crashing.beforeCommit = func() error {
		if armed.Load() {
			return crash
		}
		return nil
	}
	p := start(t, h, key, dir, crashing)
	journal(t, h.JS, first)
	cp1 := p.checkpointOf(t, 5)
	armed.Store(true)
	journal(t, h.JS, second)
	crashed := time.After(10 * time.Second)
	for stopped := false; !stopped; {
		p.clock.Advance(time.Second) // the next checkpoint syncs, and crashes
		select {
		case err := <-p.done:
			if !errors.Is(err, crash) {
				t.Fatalf("run 1 ended with %v, want the crash", err)
			}
			p.done <- err
			stopped = true
		case <-time.After(5 * time.Millisecond):
		case <-crashed:
			t.Fatal("run 1 did not crash")
		}
	}

	if st, err := os.Stat(filepath.Join(dir, "log", leavesFile)); err != nil || st.Size() <= 5*int64(leafRecordSize) {
		t.Fatalf("the crash left no uncommitted leaves on disk (%v, %v); the test does not exercise recovery", st, err)
	}

	// Run 2 resumes: the second facts come again (never acked) and are
	// appended once. A fact the JOURNAL holds twice is appended once.
	p = start(t, h, key, dir, New(cfg))
	cp2 := p.checkpointOf(t, 10)
	if err := p.halt(t); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	journal(t, h.JS, third)
	if _, err := h.JS.Publish(context.Background(), events.JournalSubject(first[0].Authority, "notes"), first[0].Marshal(), jetstream.WithMsgID("the same fact under another id")); err != nil {
		t.Fatal(err)
	}

	// Run 3 picks up what arrived while it was down.
	p = start(t, h, key, dir, New(cfg))
	cp3 := p.checkpointOf(t, 13)

	seen := map[int64]string{}
	for i, f := range append(append(append([]*events.Fact(nil), first...), second...), third...) {
		var r Receipt
		if err := json.Unmarshal(p.receipt(t, f), &r); err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[r.LeafIndex]; dup {
			t.Fatalf("facts %s and %s share leaf %d", other, f.ID, r.LeafIndex)
		}
		seen[r.LeafIndex] = f.ID.String()
		if i < 5 && r.LeafIndex != int64(i) {
			t.Fatalf("fact %d moved to leaf %d across restarts", i, r.LeafIndex)
		}
	}
	if len(seen) != 13 {
		t.Fatalf("%d distinct leaves, want 13", len(seen))
	}
	for _, pair := range [][2][]byte{{cp1, cp2}, {cp2, cp3}, {cp1, cp3}} {
		o, _ := OpenCheckpoint(pair[0], p.pub())
		n, _ := OpenCheckpoint(pair[1], p.pub())
		raw, err := request(h.Conn, OpConsistency, testAuthority, ConsistencyRequest{OldSize: o.Size, NewSize: n.Size})
		if err != nil {
			t.Fatal(err)
		}
		var reply ConsistencyReply
		if err := json.Unmarshal(raw, &reply); err != nil {
			t.Fatal(err)
		}
		if err := VerifyConsistency(pair[0], pair[1], reply.Proof, p.pub()); err != nil {
			t.Fatalf("checkpoints %d and %d across restarts: %v", o.Size, n.Size, err)
		}
	}
}

// switchable is a CheckpointSource the test points at one server or another.
type switchable struct{ to atomic.Pointer[RequestSource] }

func (s *switchable) Latest(ctx context.Context) ([]byte, error) { return s.to.Load().Latest(ctx) }
func (s *switchable) Consistency(ctx context.Context, o, n int64) (tlog.TreeProof, error) {
	return s.to.Load().Consistency(ctx, o, n)
}

func directSource(nc *nats.Conn) *RequestSource {
	return &RequestSource{Conn: nc, Subject: func(op string) string { return events.ServiceSubject(Name, op, testAuthority) }}
}

// TestWitnessPublishesForkEvidence makes a peer sign two inconsistent
// checkpoints (it loses its data directory and starts a new history with
// the same key) and shows its witness co-signs the first, then detects the
// fork, publishes the evidence and raises the alert metric.
func TestWitnessPublishesForkEvidence(t *testing.T) {
	peerKey, author := testKey("peer"), testKey("authority")
	first := startServer(t)
	p := start(t, first, peerKey, t.TempDir(), New(Config{}))
	journal(t, first.JS, facts(t, author, "one-history", 3))
	before := p.checkpointOf(t, 3)

	src := &switchable{}
	src.to.Store(directSource(first.Conn))
	wh := startServer(t)
	w := start(t, wh, testKey("witness"), t.TempDir(), New(Config{Witness: []WatchedPeer{{Key: p.pub(), Source: src}}}))
	stream, err := wh.JS.Stream(context.Background(), events.StreamReceipts)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "co-signed checkpoint", func() error {
		w.clock.Advance(10 * time.Second)
		m, err := stream.GetLastMsgForSubject(context.Background(), events.CosignedSubject(p.id(), w.id()))
		if err != nil {
			return err
		}
		pv, _ := CheckpointVerifier(p.pub())
		wv, _ := WitnessVerifier(w.pub())
		n, err := note.Open(m.Data, note.VerifierList(pv, wv))
		if err != nil || len(n.Sigs) != 2 || n.Text+"\n" != string(before[:len(n.Text)])+"\n" {
			return fmt.Errorf("co-signed checkpoint %q: %v", m.Data, err)
		}
		return nil
	})
	if err := p.halt(t); err != nil {
		t.Fatal(err)
	}

	second := startServer(t)
	p = start(t, second, peerKey, t.TempDir(), New(Config{}))
	journal(t, second.JS, facts(t, author, "another-history", 5))
	after := p.checkpointOf(t, 5)
	src.to.Store(directSource(second.Conn))

	var ev ForkEvidence
	eventually(t, "fork evidence", func() error {
		w.clock.Advance(10 * time.Second)
		m, err := stream.GetLastMsgForSubject(context.Background(), events.ForkSubject(p.id()))
		if err != nil {
			return err
		}
		ev, err = events.DecodeForkEvidence(m.Data)
		return err
	})
	if ev.Older != string(before) || ev.Newer != string(after) || ev.Peer != p.id() || ev.Witness != w.id() {
		t.Fatalf("evidence names the wrong checkpoints or peers: %+v", ev)
	}
	if err := VerifyConsistency([]byte(ev.Older), []byte(ev.Newer), ev.Proof, p.pub()); !events.IsReason(err, events.ReasonBadProof) {
		t.Fatalf("the evidence does not show an inconsistency: %v", err)
	}
	if got := counterValue(t, w.meter, "factsync.receipts.forks"); got != 1 {
		t.Fatalf("factsync.receipts.forks = %d, want 1", got)
	}
}

func counterValue(t *testing.T, r *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range sum.DataPoints {
					total += dp.Value
				}
			}
		}
	}
	return total
}

// A backlog of JOURNAL is made durable with a commit (fsyncs and the tree
// file) per signed checkpoint, not per fact or per appended batch.
func TestBacklogIsCommittedPerCheckpoint(t *testing.T) {
	h := startServer(t)
	const backlog = 2048
	journal(t, h.JS, facts(t, testKey("authority"), "backlog", backlog))
	svc := New(Config{BatchSize: 512})
	var commits atomic.Int64
	svc.beforeCommit = func() error { commits.Add(1); return nil }
	p := start(t, h, testKey("peer"), t.TempDir(), svc)
	p.checkpointOf(t, backlog)
	signed := counterValue(t, p.meter, "factsync.receipts.checkpoints")
	if n := commits.Load(); n > signed || n > backlog/64 {
		t.Fatalf("a backlog of %d facts took %d commits for %d checkpoints, want one per checkpoint at most and no more than %d", backlog, n, signed, backlog/64)
	} else {
		t.Logf("a backlog of %d facts took %d commits for %d checkpoints", backlog, n, signed)
	}
}
