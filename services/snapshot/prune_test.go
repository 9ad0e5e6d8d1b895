package snapshot

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/services/receipts"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/fold"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// selfApproved is a peer that commits its own snapshots (threshold 1).
var selfApproved = Config{EveryFacts: -1, EveryTime: -1, Default: Policy{Threshold: 1}}

// request sends a JSON request to subject with token's credentials and
// decodes the reply into out, or returns the error reply.
func request(t *testing.T, nc *nats.Conn, subject string, w *writer, token []byte, body, out any) error {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Header = Credentials{Token: token, AuthorityKey: w.authPub}.Header(w.auth())
	m.Data, _ = json.Marshal(body)
	resp, err := nc.RequestMsgWithContext(testCtx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get(events.HeaderReason) != "" {
		if e := events.DecodeError(resp.Data); e != nil {
			return e
		}
		return events.Errorf(events.Reason(resp.Header.Get(events.HeaderReason)), "%s", resp.Data)
	}
	if out != nil {
		if err := json.Unmarshal(resp.Data, out); err != nil {
			t.Fatal(err)
		}
	}
	return nil
}

// documents asks the peer's journal, through its guard, for every document
// of the collections tests write, deleted ones included.
func (p *peer) documents(t *testing.T, w *writer) map[string]events.Document {
	t.Helper()
	out := map[string]events.Document{}
	for _, coll := range []string{"notes", "tasks", "late"} {
		req := events.QueryRequest{Selection: events.Selection{Collection: coll, Deleted: events.IncludeDeleted}, Limit: 1000}
		for {
			var reply events.QueryReply
			if err := request(t, p.h.Conn, events.APISubject(events.JournalProto, events.OpQuery, w.auth()), w, w.token, req, &reply); err != nil {
				if events.IsReason(err, events.ReasonUnavailable) {
					return nil // no journal replica answers yet
				}
				t.Fatal(err)
			}
			for _, d := range reply.Documents {
				out[coll+"/"+d.ID] = d
			}
			if reply.NextCursor == "" {
				break
			}
			req.Cursor = reply.NextCursor
		}
	}
	return out
}

// foldedDocuments renders a fold state as documents keyed like documents.
func foldedDocuments(st *fold.State) map[string]events.Document {
	out := map[string]events.Document{}
	for _, coll := range st.Collections() {
		for d := range st.Documents(coll) {
			out[coll+"/"+d.ID] = d
		}
	}
	return out
}

// sameDocuments compares documents by their JSON, as a client sees them.
func sameDocuments(a, b map[string]events.Document) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// receiptsSize is the size of the peer's last published receipts
// checkpoint, 0 before the first.
func (p *peer) receiptsSize(t *testing.T) int64 {
	t.Helper()
	s, err := p.h.JS.Stream(testCtx(t), events.StreamReceipts)
	if err != nil {
		return 0
	}
	m, err := s.GetLastMsgForSubject(testCtx(t), events.CheckpointSubject(p.id))
	if err != nil {
		return 0
	}
	text, _, _ := bytes.Cut(m.Data, []byte("\n\n"))
	c, err := receipts.ParseCheckpoint(string(text) + "\n")
	if err != nil {
		t.Fatal(err)
	}
	return c.Size
}

// TestPruneKeepsDocumentsThroughQueriesAndRestarts: a peer prunes the
// history its committed snapshot covers. JOURNAL then holds the
// snapshot's facts and those after the cut; the journal answers the same
// documents before and after a restart; the receipts log appends neither
// the facts written again nor anything twice, and carries on after a
// restart.
func TestPruneKeepsDocumentsThroughQueriesAndRestarts(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 31))
	clk := clock.NewFake(testNow)
	w := newWriter(t, rng)
	history := w.history(t, rng, 600, 20)
	cut := history[400].HLC.Seconds()
	p := startPeer(t, rng, clk, selfApproved)
	journalDir, receiptsDir := t.TempDir(), t.TempDir()
	stopJournal := p.start(journal.New(journal.Config{}), clock.Real{}, journalDir)
	stopReceipts := p.start(receipts.New(receipts.Config{}), clock.Real{}, receiptsDir)
	t.Cleanup(func() { stopJournal(); stopReceipts() })
	p.ingest(w, history)

	want := fold.New()
	before, after := map[events.FactID]bool{}, map[events.FactID]bool{}
	for _, f := range history {
		want.Apply(f)
		if BeforeCut(f, cut) {
			before[f.ID] = true
		} else {
			after[f.ID] = true
		}
	}
	wantDocs := foldedDocuments(want)
	bustest.Eventually(t, 30*time.Second, func() bool { return sameDocuments(p.documents(t, w), wantDocs) }, "the journal folds the history")
	bustest.Eventually(t, 30*time.Second, func() bool { return p.receiptsSize(t) == int64(len(history)) }, "the receipts log holds the history")

	ctx, auth := testCtx(t), w.auth()
	info, err := p.snap.Create(ctx, auth, cut, w.creds())
	if err != nil || !info.Committed {
		t.Fatalf("snapshot: committed=%v err=%v", info.Committed, err)
	}
	pruned, err := p.snap.Prune(ctx, auth, w.creds())
	if err != nil {
		t.Fatal(err)
	}
	if pruned.Facts != uint64(len(before))-info.Facts || pruned.Snapshot != info.ID {
		t.Fatalf("pruned %d facts under snapshot %s; want the %d facts before the cut less the snapshot's %d, under %s", pruned.Facts, shortID(pruned.Snapshot), len(before), info.Facts, shortID(info.ID))
	}

	// JOURNAL: the snapshot's facts, every fact after the cut, the same fold.
	v := p.view(auth)
	if v.state.Digest() != want.Digest() {
		t.Fatal("the pruned JOURNAL folds to other documents")
	}
	kept := 0
	for id := range v.facts {
		switch {
		case before[id]:
			kept++
		case !after[id]:
			t.Fatalf("JOURNAL holds fact %s, which is not of the history", id)
		}
	}
	for id := range after {
		if v.facts[id] == nil {
			t.Fatalf("fact %s after the cut is gone", id)
		}
	}
	if uint64(kept) != info.Facts {
		t.Fatalf("JOURNAL keeps %d facts before the cut; the snapshot holds %d", kept, info.Facts)
	}

	// Queries, before and after the journal restarts from its checkpoint
	// (which may name a message the prune removed).
	if got := p.documents(t, w); !sameDocuments(got, wantDocs) {
		t.Fatalf("after the prune the journal answers %d documents, want %d", len(got), len(wantDocs))
	}
	stopJournal()
	stopJournal = p.start(journal.New(journal.Config{}), clock.Real{}, journalDir)
	bustest.Eventually(t, 30*time.Second, func() bool { return sameDocuments(p.documents(t, w), wantDocs) }, "the restarted journal answers the documents of the whole history")

	// Receipts: a new fact is the only leaf added, before and after a
	// restart of the service.
	more := []*events.Fact{w.fact(t, "notes", "late-1", testNow.Add(-time.Minute), 0, map[string]any{"n": 1})}
	p.ingest(w, more)
	bustest.Eventually(t, 30*time.Second, func() bool { return p.receiptsSize(t) == int64(len(history)+1) }, "the receipts log grows by the new fact only")
	stopReceipts()
	stopReceipts = p.start(receipts.New(receipts.Config{}), clock.Real{}, receiptsDir)
	p.ingest(w, []*events.Fact{w.fact(t, "notes", "late-2", testNow.Add(-time.Minute), 1, map[string]any{"n": 2})})
	bustest.Eventually(t, 30*time.Second, func() bool { return p.receiptsSize(t) == int64(len(history)+2) }, "the restarted receipts log grows by the new fact only")
	if got := p.receiptsSize(t); got != int64(len(history)+2) {
		t.Fatalf("receipts log size %d, want %d", got, len(history)+2)
	}

	// Pruning again to the same snapshot removes nothing.
	again, err := p.snap.Prune(ctx, auth, w.creds())
	if err != nil || again.Facts != 0 {
		t.Fatalf("second prune: %+v, %v; want nothing removed", again, err)
	}
}

// TestLaterSnapshotOfAPrunedPeerIsApprovedByFullHistoryPeers: after A
// prunes, its fingerprints before a later cut still count the facts it
// removed, so B and C, which hold the whole history, approve A's next
// snapshot, and A approves theirs. A cut before A's prune cannot be built
// on A any more.
func TestLaterSnapshotOfAPrunedPeerIsApprovedByFullHistoryPeers(t *testing.T) {
	cl := newCluster(t, 32, 600, 20)
	ctx, auth := testCtx(t), cl.w.auth()
	first, err := cl.a.snap.Create(ctx, auth, cl.cut, cl.w.creds())
	if err != nil || !first.Committed {
		t.Fatalf("first snapshot: committed=%v err=%v", first.Committed, err)
	}
	pruned, err := cl.a.snap.Prune(ctx, auth, cl.w.creds())
	if err != nil || pruned.Facts == 0 {
		t.Fatalf("prune: %+v, %v", pruned, err)
	}
	if got := cl.a.journalFacts(auth); got >= uint64(len(cl.history)) {
		t.Fatalf("A's JOURNAL holds %d facts after the prune, the history is %d", got, len(cl.history))
	}

	cut2 := cl.history[550].HLC.Seconds()
	second, err := cl.a.snap.Create(ctx, auth, cut2, cl.w.creds())
	if err != nil {
		t.Fatal(err)
	}
	wantCount := 0
	for _, f := range cl.history {
		if BeforeCut(f, cut2) {
			wantCount++
		}
	}
	if !second.Committed || len(second.Signatures) != 3 || second.Count != uint64(wantCount) {
		t.Fatalf("A's snapshot after its prune: committed=%v, %d signatures, count %d; want committed by A, B and C over all %d facts before the cut",
			second.Committed, len(second.Signatures), second.Count, wantCount)
	}

	cl.b.snap.cfg.Approvers = []events.PeerID{cl.a.id}
	cl.b.snap.cfg.Ask = askPeers(cl.a)
	theirs, err := cl.b.snap.Create(ctx, auth, cl.history[580].HLC.Seconds(), cl.w.creds())
	if err != nil || !theirs.Committed {
		t.Fatalf("B's snapshot approved by the pruned A: committed=%v err=%v", theirs.Committed, err)
	}
	built, _, _, err := cl.b.snap.build(ctx, auth, cl.history[100].HLC.Seconds(), nil)
	if err != nil {
		t.Fatal(err)
	}
	early, err := built.Build()
	if err != nil {
		t.Fatal(err)
	}
	manifest := early.Stamp(cl.b.key.Public().(ed25519.PublicKey), testNow, 1)
	if _, err := cl.a.snap.Approve(ctx, manifest); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("A approving a cut before its prune: %v; want conflict", err)
	}
}

func TestPruneIsRefusedWithoutACommittedSnapshot(t *testing.T) {
	rng := rand.New(rand.NewPCG(33, 33))
	clk := clock.NewFake(testNow)
	w := newWriter(t, rng)
	history := w.history(t, rng, 300, 10)
	p := startPeer(t, rng, clk, noTriggers) // threshold 2, no approver: nothing commits
	p.ingest(w, history)
	ctx, auth := testCtx(t), w.auth()
	info, err := p.snap.Create(ctx, auth, history[200].HLC.Seconds(), w.creds())
	if err != nil || info.Committed {
		t.Fatalf("proposal: committed=%v err=%v; want an open proposal", info.Committed, err)
	}
	_, err = p.snap.Prune(ctx, auth, w.creds())
	if !events.IsReason(err, events.ReasonNotFound) {
		t.Fatalf("prune without a committed snapshot: %v; want not_found", err)
	}
	if got := p.journalFacts(auth); got != uint64(len(history)) {
		t.Fatalf("JOURNAL holds %d facts, want all %d", got, len(history))
	}
}

// TestPruneIsRefusedWithoutAuthority: a token without the `snapshot` right
// is refused by the guard both at the API and at the guard's own prune
// operation, and the guard refuses a plan that would remove facts after the
// cut even with the right, and one past its deadline. JOURNAL is untouched
// throughout.
func TestPruneIsRefusedWithoutAuthority(t *testing.T) {
	rng := rand.New(rand.NewPCG(34, 34))
	clk := clock.NewFake(testNow)
	w := newWriter(t, rng)
	history := w.history(t, rng, 300, 10)
	cut := history[200].HLC.Seconds()
	p := startPeer(t, rng, clk, selfApproved)
	p.ingest(w, history)
	ctx, auth := testCtx(t), w.auth()
	if info, err := p.snap.Create(ctx, auth, cut, w.creds()); err != nil || !info.Committed {
		t.Fatalf("snapshot: committed=%v err=%v", info.Committed, err)
	}
	rights, _ := capability.ParseRights([]string{"*:write", "*:read", "*:sync"})
	noSnapshot, err := capability.Mint(w.authPriv, w.devPub, rights, testNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}

	err = request(t, p.h.Conn, events.APISubject(events.SnapshotProto, events.SnapshotOpPrune, auth), w, noSnapshot, events.SnapshotPruneRequest{Collection: "*"}, nil)
	if !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("prune through the API without the snapshot right: %v; want no_right", err)
	}
	guardPrune := events.ServiceSubject(events.GuardProto, events.GuardOpPrune, auth)
	beforeCut := uint64(0)
	for _, f := range history {
		if BeforeCut(f, cut) {
			beforeCut++
		}
	}
	everything := map[string]uint64{"notes": 1 << 40, "tasks": 1 << 40}
	plan := events.GuardPruneRequest{Snapshot: "x", CutSeconds: cut, Below: everything, BeforeCut: beforeCut, Purge: uint64(len(history))}
	if err := request(t, p.h.Conn, guardPrune, w, noSnapshot, plan, nil); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("the guard's prune without the snapshot right: %v; want no_right", err)
	}
	// With the right, the guard still checks the plan against JOURNAL: it
	// removes only what the fold does not need, whatever the plan claims.
	if err := request(t, p.h.Conn, guardPrune, w, w.token, plan, nil); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("a plan claiming to remove every fact: %v; want conflict", err)
	}
	plan.BeforeCut++
	if err := request(t, p.h.Conn, guardPrune, w, w.token, plan, nil); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("a plan made from another JOURNAL: %v; want conflict", err)
	}
	// A plan past its deadline: its sender may have settled it already.
	late := plan
	late.NotAfterMillis = testNow.Add(-time.Second).UnixMilli()
	if err := request(t, p.h.Conn, guardPrune, w, w.token, late, nil); !events.IsReason(err, events.ReasonExpired) {
		t.Fatalf("a plan past its deadline: %v; want expired", err)
	}
	if got := p.journalFacts(auth); got != uint64(len(history)) {
		t.Fatalf("JOURNAL holds %d facts, want all %d", got, len(history))
	}
	// With the right, through the API, the prune runs.
	var pruned events.SnapshotPruned
	if err := request(t, p.h.Conn, events.APISubject(events.SnapshotProto, events.SnapshotOpPrune, auth), w, w.token, events.SnapshotPruneRequest{Collection: "*"}, &pruned); err != nil {
		t.Fatal(err)
	}
	if pruned.Facts == 0 || p.journalFacts(auth) != uint64(len(history))-pruned.Facts {
		t.Fatalf("pruned %+v; JOURNAL holds %d of %d facts", pruned, p.journalFacts(auth), len(history))
	}
}

// TestJournalDownDuringAPruneRebuildsItsDocuments: a journal replica
// checkpoints part of the history and stops; the rest arrives, the peer
// snapshots and prunes while the journal is down, so facts it never folded
// are gone from JOURNAL. Restarted, it answers the documents of the whole
// history, whether the message its checkpoint ends at was purged (it
// folds JOURNAL from the start: the facts that stay fold to the same
// documents) or kept (it resumes after it and never sees the removed
// facts, which the documents do not need: the fold is a join).
func TestJournalDownDuringAPruneRebuildsItsDocuments(t *testing.T) {
	for _, tc := range []struct {
		name string
		// lastAfterCut ends the first part with a fact of a collection
		// that has nothing before the cut, so no prune touches the
		// checkpoint's message.
		lastAfterCut bool
	}{{"checkpoint message purged", false}, {"checkpoint message kept", true}} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(35, 35))
			clk := clock.NewFake(testNow)
			w := newWriter(t, rng)
			history := w.history(t, rng, 600, 20)
			cut := history[450].HLC.Seconds()
			first := history[:200:200]
			if tc.lastAfterCut {
				first = append(first, w.fact(t, "late", "l", testNow.Add(-time.Minute), 0, map[string]any{"n": 1}))
			}
			p := startPeer(t, rng, clk, selfApproved)
			journalDir := t.TempDir()
			stopJournal := p.start(journal.New(journal.Config{}), clock.Real{}, journalDir)
			t.Cleanup(func() { stopJournal() })

			early := fold.New()
			for _, f := range first {
				early.Apply(f)
			}
			p.ingest(w, first)
			bustest.Eventually(t, 30*time.Second, func() bool { return sameDocuments(p.documents(t, w), foldedDocuments(early)) }, "the journal folds the first part")
			checkpointSeq := p.journalLastSeq()
			stopJournal() // checkpoints at checkpointSeq

			p.ingest(w, history[200:])
			ctx, auth := testCtx(t), w.auth()
			if info, err := p.snap.Create(ctx, auth, cut, w.creds()); err != nil || !info.Committed {
				t.Fatalf("snapshot: committed=%v err=%v", info.Committed, err)
			}
			pruned, err := p.snap.Prune(ctx, auth, w.creds())
			if err != nil || pruned.Facts == 0 {
				t.Fatalf("prune: %+v, %v", pruned, err)
			}
			if kept := p.journalHolds(checkpointSeq); kept != tc.lastAfterCut {
				t.Fatalf("JOURNAL still holds the checkpoint's message %d: %v, want %v", checkpointSeq, kept, tc.lastAfterCut)
			}

			want := fold.New()
			for _, f := range append(first, history[200:]...) {
				want.Apply(f)
			}
			stopJournal = p.start(journal.New(journal.Config{}), clock.Real{}, journalDir)
			bustest.Eventually(t, 30*time.Second, func() bool { return sameDocuments(p.documents(t, w), foldedDocuments(want)) }, "the journal, down during the prune, answers the documents of the whole history")
		})
	}
}

// journalLastSeq is JOURNAL's last sequence.
func (p *peer) journalLastSeq() uint64 {
	p.t.Helper()
	s, err := p.h.JS.Stream(testCtx(p.t), events.StreamJournal)
	if err != nil {
		p.t.Fatal(err)
	}
	info, err := s.Info(testCtx(p.t))
	if err != nil {
		p.t.Fatal(err)
	}
	return info.State.LastSeq
}

// journalHolds reports whether JOURNAL still holds the message at seq.
func (p *peer) journalHolds(seq uint64) bool {
	p.t.Helper()
	s, err := p.h.JS.Stream(testCtx(p.t), events.StreamJournal)
	if err != nil {
		p.t.Fatal(err)
	}
	_, err = s.GetMsg(testCtx(p.t), seq)
	return err == nil
}

// TestPrunedFactsThatArriveAgainAreRefusedAndCountedOnce: after A prunes,
// a client replays the whole history to A once JOURNAL's dedup window has
// passed. The removed facts are refused with `pruned` and not stored
// again; the kept ones and a new fact before the cut that changes a
// document are stored. So A counts every fact once, and B and C, which
// hold the whole history and the new fact, approve A's next snapshot. A
// new fact before the cut that A's state already supersedes is refused
// too: it could never show.
func TestPrunedFactsThatArriveAgainAreRefusedAndCountedOnce(t *testing.T) {
	cl := newCluster(t, 36, 600, 20)
	ctx, auth := testCtx(t), cl.w.auth()
	if first, err := cl.a.snap.Create(ctx, auth, cl.cut, cl.w.creds()); err != nil || !first.Committed {
		t.Fatalf("first snapshot: committed=%v err=%v", first.Committed, err)
	}
	pruned, err := cl.a.snap.Prune(ctx, auth, cl.w.creds())
	if err != nil || pruned.Facts == 0 {
		t.Fatalf("prune: %+v, %v", pruned, err)
	}
	kept := cl.a.view(auth).facts
	cl.a.shortenJournalDedup()

	// A new document before the cut: it changes the documents, so every
	// peer stores it.
	fresh := cl.w.fact(t, "notes", "fresh", testNow.Add(-time.Hour), 0, map[string]any{"n": -1})
	for _, p := range []*peer{cl.b, cl.c} {
		p.ingest(cl.w, []*events.Fact{fresh})
	}
	cl.a.publish(cl.w, append(append([]*events.Fact{}, cl.history...), fresh))
	cl.a.ingressDrained()

	v := cl.a.view(auth)
	for _, f := range cl.history {
		if kept[f.ID] == nil && v.facts[f.ID] != nil {
			t.Fatalf("fact %s, which the prune removed, is in A's JOURNAL again", f.ID)
		}
	}
	if len(v.facts) != len(kept)+1 || v.facts[fresh.ID] == nil {
		t.Fatalf("A's JOURNAL holds %d distinct facts; want the %d kept and the new one", len(v.facts), len(kept))
	}
	if got := cl.a.denied(events.ReasonPruned); got != pruned.Facts {
		t.Fatalf("DENIED holds %d `pruned` denials; want one per removed fact, %d", got, pruned.Facts)
	}

	cut2 := cl.history[550].HLC.Seconds()
	second, err := cl.a.snap.Create(ctx, auth, cut2, cl.w.creds())
	if err != nil || !second.Committed || len(second.Signatures) != 3 {
		t.Fatalf("A's snapshot after the replay: %+v, %v; want committed by A, B and C", second, err)
	}

	// Superseded on A before the cut (the documents were written after
	// it): refused although no peer ever had it.
	stale := cl.w.fact(t, "notes", cl.history[0].Document(), testNow.Add(-2*time.Hour), 0, map[string]any{"n": -2})
	if cl.history[0].Collection() != "notes" {
		stale = cl.w.fact(t, "tasks", cl.history[0].Document(), testNow.Add(-2*time.Hour), 0, map[string]any{"n": -2})
	}
	cl.a.publish(cl.w, []*events.Fact{stale})
	cl.a.ingressDrained()
	if cl.a.view(auth).facts[stale.ID] != nil || cl.a.denied(events.ReasonPruned) != pruned.Facts+1 {
		t.Fatalf("a new fact A's state before its prune cut supersedes was stored, or not refused with `pruned`")
	}
}

// shortenJournalDedup makes JOURNAL forget message ids at once, as it
// does after events.DedupWindow: a fact sent again is stored again unless
// the guard refuses it.
func (p *peer) shortenJournalDedup() {
	p.t.Helper()
	ctx := testCtx(p.t)
	s, err := p.h.JS.Stream(ctx, events.StreamJournal)
	if err != nil {
		p.t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Duplicates = 100 * time.Millisecond // the least JetStream takes
	if _, err := p.h.JS.UpdateStream(ctx, cfg); err != nil {
		p.t.Fatal(err)
	}
}

// publish sends facts to the peer's INGRESS, as a client would.
func (p *peer) publish(w *writer, facts []*events.Fact) {
	p.t.Helper()
	for i := 0; i < len(facts); i += 500 {
		fb := &eventsv1.FactBatch{Tokens: [][]byte{w.token}}
		for _, f := range facts[i:min(i+500, len(facts))] {
			fb.Facts = append(fb.Facts, f.Proto())
		}
		data, _ := proto.Marshal(fb)
		if _, err := p.h.JS.Publish(testCtx(p.t), events.IngressFactSubject(w.auth()), data); err != nil {
			p.t.Fatal(err)
		}
	}
}

// ingressDrained waits until the guard has decided everything in INGRESS.
func (p *peer) ingressDrained() {
	p.t.Helper()
	bustest.Eventually(p.t, 30*time.Second, func() bool {
		c, err := p.h.JS.Consumer(testCtx(p.t), events.StreamIngress, guard.Name)
		if err != nil {
			return false
		}
		info, err := c.Info(testCtx(p.t))
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, "the guard decides INGRESS")
}

// denied counts the denials with reason r in DENIED.
func (p *peer) denied(r events.Reason) uint64 {
	p.t.Helper()
	s, err := p.h.JS.Stream(testCtx(p.t), events.StreamDenied)
	if err != nil {
		p.t.Fatal(err)
	}
	info, err := s.Info(testCtx(p.t), jetstream.WithSubjectFilter(events.DeniedSubject(r)))
	if err != nil {
		p.t.Fatal(err)
	}
	return info.State.Msgs
}

// TestPruneUnderWayIsNotSettledByOthers: while the guard carries a prune
// out (which takes long on a large authority), anti-entropy asks the floor
// and an approver builds at a later cut. Neither may settle the pending
// prune against a JOURNAL the guard has not purged yet: that would drop
// its count, and the peer's later fingerprints would miss the removed
// facts. The floor already reports the prune's cut; a build waits for the
// prune (`unavailable`). After it, the next snapshot counts every fact.
func TestPruneUnderWayIsNotSettledByOthers(t *testing.T) {
	cl := newCluster(t, 37, 600, 20)
	ctx, auth := testCtx(t), cl.w.auth()
	if first, err := cl.a.snap.Create(ctx, auth, cl.cut, cl.w.creds()); err != nil || !first.Committed {
		t.Fatalf("first snapshot: committed=%v err=%v", first.Committed, err)
	}
	cut2 := cl.history[550].HLC.Seconds()
	cl.a.snap.cfg.beforePruneAsk = func(events.AuthorityID) {
		floor, err := cl.a.snap.Floor(ctx, auth)
		if err != nil || floor.SettledCut != cl.cut {
			t.Errorf("floor during the prune: %+v, %v; want the prune's cut %d", floor, err, cl.cut)
		}
		if _, _, _, err := cl.a.snap.build(ctx, auth, cut2, nil); !events.IsReason(err, events.ReasonUnavailable) {
			t.Errorf("a build during the prune: %v; want unavailable until it ends", err)
		}
	}
	pruned, err := cl.a.snap.Prune(ctx, auth, cl.w.creds())
	if err != nil || pruned.Facts == 0 {
		t.Fatalf("prune: %+v, %v", pruned, err)
	}
	cl.a.snap.cfg.beforePruneAsk = nil
	wantCount := 0
	for _, f := range cl.history {
		if BeforeCut(f, cut2) {
			wantCount++
		}
	}
	second, err := cl.a.snap.Create(ctx, auth, cut2, cl.w.creds())
	if err != nil || !second.Committed || second.Count != uint64(wantCount) {
		t.Fatalf("A's snapshot after the prune: %+v, %v; want committed by all, over %d facts", second, err, wantCount)
	}
}

// TestUnansweredPruneSettlesAfterItsDeadline: a prune the guard did not
// answer about stays pending, its cut settled and builds refused, until
// its deadline (and the margin for clocks) has passed; then any reader
// settles it against JOURNAL, which here holds nothing below its point,
// so it counts.
func TestUnansweredPruneSettlesAfterItsDeadline(t *testing.T) {
	rng := rand.New(rand.NewPCG(38, 38))
	clk := clock.NewFake(testNow)
	w := newWriter(t, rng)
	p := startPeer(t, rng, clk, selfApproved)
	ctx, auth := testCtx(t), w.auth()
	var part pendingCollection
	part.Below, part.Removed.Count = 10, 3
	rec := prunedRecord{Pending: &pendingPrune{Snapshot: "s", CutSeconds: 100, Collections: map[string]pendingCollection{"notes": part}, NotAfter: testNow.Add(time.Minute)}}
	b, _ := json.Marshal(rec)
	if _, err := p.snap.pruned.Create(ctx, string(auth), b); err != nil {
		t.Fatal(err)
	}
	if floor, err := p.snap.Floor(ctx, auth); err != nil || floor.SettledCut != 100 {
		t.Fatalf("floor of a pending prune: %+v, %v; want its cut", floor, err)
	}
	if _, _, _, err := p.snap.build(ctx, auth, 200, nil); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("build before the deadline: %v; want unavailable", err)
	}
	clk.Advance(time.Minute + pruneSettleMargin + time.Second)
	got, _, err := p.snap.readPruned(ctx, auth, false)
	if err != nil || got.Pending != nil || got.CutSeconds != 100 || got.Removed.Count != 3 {
		t.Fatalf("after the deadline: %+v, %v; want the prune settled and counted", got, err)
	}
	if _, _, _, err := p.snap.build(ctx, auth, 200, nil); events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("build after the prune settled: %v; want it to read JOURNAL (which holds nothing here)", err)
	}
}
