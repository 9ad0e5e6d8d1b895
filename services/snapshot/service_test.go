package snapshot

import (
	"context"
	"crypto/ed25519"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go"
)

// noTriggers keeps the automatic triggers out of a test's way.
var noTriggers = Config{EveryFacts: -1, EveryTime: -1}

// cluster is three peers holding the same history, A configured to ask B
// and C for approvals.
type cluster struct {
	clk     *clock.Fake
	rng     *rand.Rand
	w       *writer
	history []*events.Fact
	cut     uint32
	a, b, c *peer
}

func newCluster(t *testing.T, seed uint64, facts, docs int) *cluster {
	t.Helper()
	cl := &cluster{clk: clock.NewFake(testNow), rng: rand.New(rand.NewPCG(seed, seed))}
	cl.w = newWriter(t, cl.rng)
	cl.history = cl.w.history(t, cl.rng, facts, docs)
	cl.cut = cl.history[facts*2/3].HLC.Seconds()
	cl.a = startPeer(t, cl.rng, cl.clk, noTriggers)
	cl.b = startPeer(t, cl.rng, cl.clk, noTriggers)
	cl.c = startPeer(t, cl.rng, cl.clk, noTriggers)
	for _, p := range []*peer{cl.a, cl.b, cl.c} {
		p.ingest(cl.w, cl.history)
	}
	cl.a.snap.cfg.Approvers = []events.PeerID{cl.b.id, cl.c.id}
	cl.a.snap.cfg.Ask = askPeers(cl.b, cl.c)
	return cl
}

// reconcileAfterCut runs negentropy between two indexes restricted to the
// range after the cut and returns the ids the initiator needs.
func reconcileAfterCut(t *testing.T, initiator, responder *negentropy.Index, cut uint32) []events.FactID {
	t.Helper()
	var need []events.FactID
	initiator.View(func(is negentropy.Storage) {
		responder.View(func(rs negentropy.Storage) {
			in, err := negentropy.NewInitiator(StorageAfterCut(is, cut), negentropy.DefaultFrameSizeLimit)
			if err != nil {
				t.Fatal(err)
			}
			out, err := negentropy.NewResponder(StorageAfterCut(rs, cut), negentropy.DefaultFrameSizeLimit)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := in.Initiate()
			for msg != nil && err == nil {
				var reply []byte
				if reply, err = out.Reconcile(msg); err == nil {
					var n []events.FactID
					msg, _, n, err = in.Reconcile(reply)
					need = append(need, n...)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	})
	return need
}

func TestNewPeerBootstrapsFromSnapshotToTheStateOfFullHistory(t *testing.T) {
	cl := newCluster(t, 21, 900, 30)
	ctx, auth := testCtx(t), cl.w.auth()
	info, err := cl.a.snap.Create(ctx, auth, cl.cut, cl.w.creds())
	if err != nil {
		t.Fatal(err)
	}
	if !info.Committed || len(info.Signatures) != 3 {
		t.Fatalf("snapshot committed=%v with %d signatures; want committed with A, B and C", info.Committed, len(info.Signatures))
	}

	// D is new. It reaches A's snapshot service through A's guard.
	d := startPeer(t, cl.rng, cl.clk, noTriggers)
	var (
		mu     sync.Mutex
		phases []events.SnapshotPhase
	)
	sub, err := d.h.Conn.Subscribe(events.SnapshotProgressSubject(auth), func(m *nats.Msg) {
		p, _ := events.DecodeSnapshotProgress(m.Data)
		mu.Lock()
		defer mu.Unlock()
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	src := PeerSource{Conn: bustest.Connect(t, cl.a.h.URL()), Credentials: cl.w.creds()}
	v, err := d.snap.Restore(ctx, auth, src)
	if err != nil {
		t.Fatal(err)
	}
	if v.ID != info.ID {
		t.Fatalf("restored %s, the latest committed is %s", v.ID, info.ID)
	}
	marker, ok, err := ReadRestoreMarker(ctx, d.snap.restore.Markers, auth)
	if err != nil || !ok || marker.State != events.SnapshotPhaseComplete || marker.CutSeconds != cl.cut {
		t.Fatalf("restore marker %+v (found %v, %v); want complete at cut %d", marker, ok, err, cl.cut)
	}
	bustest.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(phases) > 0 && phases[len(phases)-1] == events.SnapshotPhaseComplete
	}, "restore progress on the bus reaches %s", events.SnapshotPhaseComplete)

	// Then D reconciles only the range after the cut with A.
	full, boot := cl.a.view(auth), d.view(auth)
	need := reconcileAfterCut(t, boot.index, full.index, cl.cut)
	var late []*events.Fact
	for _, id := range need {
		f := full.facts[id]
		if f == nil || BeforeCut(f, cl.cut) {
			t.Fatalf("reconciliation after the cut asked for %s, which is before it or unknown", id)
		}
		late = append(late, f)
	}
	if len(late) == 0 {
		t.Fatal("no facts after the cut; the test proves nothing about the range after it")
	}
	d.ingest(cl.w, late)

	boot = d.view(auth)
	if boot.state.Digest() != full.state.Digest() {
		t.Fatal("the bootstrapped peer's documents differ from the full-history peer's")
	}
	if got, want := IndexSummary(boot.index, cl.cut, true), IndexSummary(full.index, cl.cut, true); got != want {
		t.Fatalf("fact-set fingerprint after the cut: bootstrapped %s/%d, full history %s/%d", got.Hex(), got.Count, want.Hex(), want.Count)
	}
	if boot.index.Len() >= full.index.Len() {
		t.Fatalf("bootstrapped peer holds %d facts, full history %d; the snapshot should hold fewer", boot.index.Len(), full.index.Len())
	}
	t.Logf("full history %d facts, bootstrapped %d (snapshot %d + %d after the cut)", full.index.Len(), boot.index.Len(), len(v.Content.Facts), len(late))

	// And D counts the facts its snapshot left out at any later cut, so it
	// can approve the next snapshot like a peer with full history.
	var next uint32
	for _, f := range full.facts {
		next = max(next, f.HLC.Seconds()+1)
	}
	own, _, _, err := d.snap.build(ctx, auth, next, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref, _, _, err := cl.a.snap.build(ctx, auth, next, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := own.summaryBefore(), ref.summaryBefore(); got != want {
		t.Fatalf("summary before the later cut %d: bootstrapped %s/%d, full history %s/%d", next, got.Hex(), got.Count, want.Hex(), want.Count)
	}
}

// tamperingSource serves a peer's snapshots with one change.
type tamperingSource struct {
	Source
	list  func([]events.SnapshotInfo)
	chunk func(offset int64, data []byte)
}

func (s tamperingSource) List(ctx context.Context, auth events.AuthorityID) ([]events.SnapshotInfo, error) {
	list, err := s.Source.List(ctx, auth)
	if err == nil && s.list != nil {
		s.list(list)
	}
	return list, err
}

func (s tamperingSource) Fetch(ctx context.Context, auth events.AuthorityID, id string, offset, limit int64) (events.SnapshotFetchReply, error) {
	r, err := s.Source.Fetch(ctx, auth, id, offset, limit)
	if err == nil && s.chunk != nil {
		s.chunk(offset, r.Data)
	}
	return r, err
}

func TestTamperedSnapshotIsRefusedWithReason(t *testing.T) {
	cl := newCluster(t, 22, 600, 20)
	ctx, auth := testCtx(t), cl.w.auth()
	info, err := cl.a.snap.Create(ctx, auth, cl.cut, cl.w.creds())
	if err != nil || !info.Committed {
		t.Fatalf("create: %+v, %v", info, err)
	}
	d := startPeer(t, cl.rng, cl.clk, noTriggers)
	honest := PeerSource{Conn: bustest.Connect(t, cl.a.h.URL()), Credentials: cl.w.creds()}

	// The guard fronts fetches: a token with neither the snapshot right nor
	// the sync right (which may list and fetch, for bootstrap) gets nothing.
	rights, _ := capability.ParseRights([]string{"*:read", "*:write"})
	readOnly, err := capability.Mint(cl.w.authPriv, cl.w.devPub, rights, testNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	noRight := PeerSource{Conn: honest.Conn, Credentials: Credentials{Token: readOnly, AuthorityKey: cl.w.authPub}}
	if _, err := d.snap.Restore(ctx, auth, noRight); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("restore with a token lacking the snapshot and sync rights: %v", err)
	}
	if _, err := cl.a.snap.Create(ctx, auth, uint32(testNow.Unix())+60, cl.w.creds()); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("snapshot at a cut in the future: %v", err)
	}
	cases := []struct {
		name string
		src  Source
		want events.Reason
	}{
		{"one changed byte of content", tamperingSource{Source: honest, chunk: func(off int64, data []byte) {
			if off == 0 {
				data[len(data)/2] ^= 0x01
			}
		}}, events.ReasonTampered},
		{"forged manifest", tamperingSource{Source: honest, list: func(list []events.SnapshotInfo) {
			m, _ := DecodeManifest(list[0].Manifest)
			m.Summary = summaryOfSum(m.Summary.Sum, m.Summary.Count+1000)
			list[0].Manifest = m.Marshal()
			list[0].Signatures = []events.SnapshotSignature{Sign(d.key, list[0].Manifest), list[0].Signatures[1]}
		}}, events.ReasonBelowThreshold},
		{"listed size not the manifest's", tamperingSource{Source: honest, list: func(list []events.SnapshotInfo) {
			list[0].ContentSize = 1 << 50 // allocated up front, this would crash the service
		}}, events.ReasonTampered},
		{"manifest whose fingerprint is not its id sum's", tamperingSource{Source: honest, list: func(list []events.SnapshotInfo) {
			m, _ := DecodeManifest(list[0].Manifest)
			m.Summary.Sum[0]++
			list[0].Manifest = m.Marshal()
		}}, events.ReasonMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.snap.Restore(ctx, auth, tc.src)
			if !events.IsReason(err, tc.want) {
				t.Fatalf("got %v, want reason %s", err, tc.want)
			}
			if n := d.journalFacts(auth); n != 0 {
				t.Fatalf("a refused snapshot loaded %d facts", n)
			}
			if _, ok, _ := ReadRestoreMarker(ctx, d.snap.restore.Markers, auth); ok {
				t.Fatal("a refused snapshot left a restore marker")
			}
		})
	}

	// An honest snapshot over this peer's limit is refused before it is
	// fetched.
	d.snap.restore.MaxContentBytes = info.ContentSize - 1
	if _, err := d.snap.Restore(ctx, auth, honest); !events.IsReason(err, events.ReasonTooLarge) {
		t.Fatalf("a snapshot of %d bytes with a restore limit one byte less: %v, want too_large", info.ContentSize, err)
	}
}

func TestWriterPausedPastItsLeaseIsFencedOff(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 23))
	clk := clock.NewFake(testNow)
	w := newWriter(t, rng)
	history := w.history(t, rng, 300, 10)
	cfg := noTriggers
	cfg.Default, cfg.Lease = Policy{Threshold: 1}, 10*time.Second
	a := startPeer(t, rng, clk, cfg)
	b := New(cfg) // a second writer process on the same site
	a.run(b, clk)
	a.ingest(w, history)
	ctx, auth, cut := testCtx(t), w.auth(), history[200].HLC.Seconds()

	paused, resume := make(chan struct{}), make(chan struct{})
	a.snap.cfg.afterBuild = func(events.AuthorityID) {
		close(paused)
		<-resume
	}
	var errA error
	doneA := make(chan struct{})
	go func() {
		defer close(doneA)
		_, errA = a.snap.Create(ctx, auth, cut, w.creds())
	}()
	<-paused
	if _, err := b.Create(ctx, auth, cut, w.creds()); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("B wrote while A held a live lease: %v", err)
	}
	clk.Advance(11 * time.Second) // A stays paused past its lease
	infoB, err := b.Create(ctx, auth, cut, w.creds())
	if err != nil || !infoB.Committed {
		t.Fatalf("B takes over: %+v, %v", infoB, err)
	}
	close(resume)
	<-doneA
	if !events.IsReason(errA, events.ReasonConflict) {
		t.Fatalf("A came back after its lease and wrote: %v", errA)
	}
	list, err := a.snap.List(ctx, auth, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != infoB.ID {
		t.Fatalf("SNAPSHOTS holds %d snapshots; want only B's", len(list))
	}
}

func TestInterruptedRestoreResumesAndOnlyThenLooksComplete(t *testing.T) {
	cl := newCluster(t, 24, 600, 30)
	ctx, auth := testCtx(t), cl.w.auth()
	if _, err := cl.a.snap.Create(ctx, auth, cl.cut, cl.w.creds()); err != nil {
		t.Fatal(err)
	}
	d := startPeer(t, cl.rng, cl.clk, noTriggers)
	src := PeerSource{Conn: bustest.Connect(t, cl.a.h.URL()), Credentials: cl.w.creds()}
	r := *d.snap.restore
	r.BatchFacts = 5
	crash, stop := context.WithCancel(ctx)
	r.afterBatch = func(i int) {
		if i == 1 {
			stop() // the process dies after its second batch
		}
	}
	if _, err := r.Restore(crash, src, auth); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted restore: %v", err)
	}
	marker, ok, err := ReadRestoreMarker(ctx, r.Markers, auth)
	if err != nil || !ok || marker.State != events.SnapshotPhaseLoading || marker.Published != 2 || marker.Batches <= 2 {
		t.Fatalf("after the crash the marker is %+v (found %v, %v); want loading with 2 batches published", marker, ok, err)
	}
	var resumedFrom []int
	r.afterBatch = func(i int) { resumedFrom = append(resumedFrom, i) }
	v, err := r.Restore(ctx, src, auth)
	if err != nil {
		t.Fatal(err)
	}
	if len(resumedFrom) == 0 || resumedFrom[0] != 2 {
		t.Fatalf("resumed at batch %v; want 2", resumedFrom)
	}
	if marker, _, _ = ReadRestoreMarker(ctx, r.Markers, auth); marker.State != events.SnapshotPhaseComplete {
		t.Fatalf("marker %+v after the resumed restore", marker)
	}
	if got := d.view(auth).state.Digest(); got != v.State.Digest() {
		t.Fatal("the restored journal does not fold to the snapshot's documents")
	}
	if _, err := r.Restore(ctx, src, auth); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("restoring the same cut again: %v", err)
	}
}

func TestApproverWithADifferentJournalRefuses(t *testing.T) {
	cl := newCluster(t, 25, 300, 10)
	ctx, auth := testCtx(t), cl.w.auth()
	// C learns one more fact before the cut than A and B.
	extra := cl.w.fact(t, "notes", "extra", testNow.Add(-time.Hour), 7, map[string]any{"x": 1})
	cl.c.ingest(cl.w, []*events.Fact{extra})
	policy := Policy{Threshold: 3}
	cl.a.snap.cfg.Policies = map[events.AuthorityID]Policy{auth: policy}
	info, err := cl.a.snap.Create(ctx, auth, cl.cut, cl.w.creds())
	if err != nil {
		t.Fatal(err)
	}
	if info.Committed || len(info.Signatures) != 2 {
		t.Fatalf("with C disagreeing, 3-of-3 committed=%v with %d signatures", info.Committed, len(info.Signatures))
	}
	if _, err := cl.c.snap.Approve(ctx, info.Manifest); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("C approves a cut its journal disagrees with: %v", err)
	}
}

func TestApprovalsTravelThroughTheApproversGuard(t *testing.T) {
	cl := newCluster(t, 26, 300, 10)
	ctx, auth := testCtx(t), cl.w.auth()
	extra := cl.w.fact(t, "notes", "extra", testNow.Add(-time.Hour), 7, map[string]any{"x": 1})
	cl.c.ingest(cl.w, []*events.Fact{extra})
	b, err := BuildFromJournal(ctx, cl.a.h.JS, auth, cl.cut)
	if err != nil {
		t.Fatal(err)
	}
	built, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	manifest := built.Stamp(cl.a.key.Public().(ed25519.PublicKey), testNow, 1)
	// A's connection reaches B and C only by their peer subjects; here all
	// three servers are separate, so each approver is asked on its own.
	askB := PeerSource{Conn: cl.b.h.Conn, Peer: cl.b.id, Credentials: cl.w.creds()}
	sig, err := askB.Approve(ctx, auth, manifest)
	if err != nil {
		t.Fatal(err)
	}
	if sig.Peer != cl.b.id || CheckSignature(manifest, sig) != nil {
		t.Fatalf("B's approval %+v does not verify as B's", sig.Peer)
	}
	askC := PeerSource{Conn: cl.c.h.Conn, Peer: cl.c.id, Credentials: cl.w.creds()}
	if _, err := askC.Approve(ctx, auth, manifest); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("C, whose journal differs, approved through its guard: %v", err)
	}
}

func TestTriggerSnapshotsAfterEveryNFacts(t *testing.T) {
	rng := rand.New(rand.NewPCG(27, 27))
	clk := clock.NewFake(testNow)
	w := newWriter(t, rng)
	cfg := Config{EveryFacts: 100, EveryTime: -1, Default: Policy{Threshold: 1}}
	p := startPeer(t, rng, clk, cfg)
	ctx, auth := testCtx(t), w.auth()
	history := w.history(t, rng, 120, 5)
	p.ingest(w, history[:60])
	clk.Advance(2 * time.Second)
	if list, _ := p.snap.List(ctx, auth, false); len(list) != 0 {
		t.Fatalf("snapshot after 60 facts with a trigger at 100: %d", len(list))
	}
	p.ingest(w, history[60:])
	bustest.Eventually(t, 20*time.Second, func() bool {
		clk.Advance(time.Second)
		list, err := p.snap.List(ctx, auth, true)
		return err == nil && len(list) == 1
	}, "a committed snapshot once 100 facts arrived")
}
