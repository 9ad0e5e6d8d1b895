package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/fold"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Pruning drops an authority's JOURNAL history that its latest committed
// snapshot covers (docs/snapshot.md, "Pruning"). JOURNAL is the guard's:
// this service verifies the snapshot, plans the prune and asks the guard
// (events.GuardOpPrune), which checks the plan against JOURNAL again and
// carries it out. What stays is the snapshot's facts (the ones the fold
// before the cut needs) and every fact at or after the first one past the
// cut, so the documents folded from JOURNAL do not change.
//
// Two things outlive the removed facts, in PrunedBucket:
//   - the cut, below which this peer reconciles nothing with its peers
//     (it no longer holds those facts; a peer that needs them gets the
//     snapshot instead, see Floor);
//   - the negentropy id sum and count of every fact removed, so the
//     fingerprint this peer computes before a later cut (for its own
//     snapshots and for approving others') is still that of every fact it
//     ever held, and peers with full history agree with it.

// Retention is an authority's retention policy.
type Retention struct {
	// PruneJournal drops the JOURNAL history each newly committed
	// snapshot covers, right after the commit.
	PruneJournal bool
}

// PrunedBucket holds one prunedRecord per authority.
func PrunedBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      "snapshot-pruned",
		Description: "per authority, the cut this peer pruned JOURNAL to and the id sum of the facts it removed",
		Storage:     jetstream.FileStorage,
		History:     1,
	}
}

// idSum is the negentropy id sum and count of a set of facts: those a
// prune removed, or a restore left out, or JOURNAL holds before a cut.
type idSum struct {
	Sum   negentropy.Accumulator `json:"sum"`
	Count uint64                 `json:"count"`
}

// prunedRecord is what this peer's JOURNAL of one authority lacks before
// a cut: the facts its prunes removed and those a restore left out.
type prunedRecord struct {
	Snapshot   string `json:"snapshot,omitempty"`
	CutSeconds uint32 `json:"cut_seconds,omitempty"`
	Removed    idSum  `json:"removed"`
	// Pending is a prune sent to the guard and not yet known to have
	// happened. Once the guard can no longer act on it (it answered, or
	// the plan's deadline passed), each collection's part is counted in
	// when JOURNAL holds no message of the collection below its Below,
	// and dropped while JOURNAL still does. A crash, or a lost reply,
	// between the request and the record therefore neither loses nor
	// double counts what was removed; until then the prune's cut counts
	// as settled and nothing builds a fingerprint (see readPruned).
	Pending *pendingPrune `json:"pending,omitempty"`
}

// pendingPrune is a prune sent to the guard. The guard purges collection
// by collection, so each is settled on its own.
type pendingPrune struct {
	Snapshot    string                       `json:"snapshot"`
	CutSeconds  uint32                       `json:"cut_seconds"`
	Collections map[string]pendingCollection `json:"collections"`
	// NotAfter is the plan's deadline (GuardPruneRequest.NotAfterMillis);
	// zero in records written before plans had one.
	NotAfter time.Time `json:"not_after,omitzero"`
}

// pruneSettleMargin is how long after a plan's deadline the prune is
// settled by anyone but its sender: room for the clocks of the guard and
// this service to differ, and for a purge sent just before the deadline.
const pruneSettleMargin = time.Minute

// over reports whether the guard can no longer act on the prune at now.
func (p *pendingPrune) over(now time.Time) bool {
	return p.NotAfter.IsZero() || now.After(p.NotAfter.Add(pruneSettleMargin))
}

// pendingCollection is one collection's part of a pending prune: its
// messages below Below go, and with them the facts Removed sums.
type pendingCollection struct {
	Below   uint64 `json:"below"`
	Removed idSum  `json:"removed"`
}

// settledCut is the cut below which this peer may no longer hold every
// fact: a prune sent to the guard counts from the moment it is sent.
func (r prunedRecord) settledCut() uint32 {
	if r.Pending != nil {
		return max(r.CutSeconds, r.Pending.CutSeconds)
	}
	return r.CutSeconds
}

// base is what the fingerprints before a cut at or after CutSeconds add
// back; nil when nothing was removed.
func (r prunedRecord) base() *idSum {
	if r.Removed.Count == 0 {
		return nil
	}
	return &r.Removed
}

// readPruned returns auth's record and its KV revision (0 when there is
// none), with a pending prune settled against JOURNAL once the guard can
// no longer act on it: guardDone says the caller sent it and the guard
// answered; otherwise only its deadline tells. Settling a prune the guard
// is still carrying out would drop the part it has not purged yet from
// the count. A record returned with Pending set is not settled.
func (s *Service) readPruned(ctx context.Context, auth events.AuthorityID, guardDone bool) (prunedRecord, uint64, error) {
	for {
		var rec prunedRecord
		e, err := s.pruned.Get(ctx, string(auth))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return rec, 0, nil
		case err != nil:
			return rec, 0, events.Wrap(events.ReasonUnavailable, err, "read the prune record")
		}
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return rec, 0, events.Wrap(events.ReasonInternal, err, "decode the prune record")
		}
		if rec.Pending == nil || !guardDone && !rec.Pending.over(s.env.Clock.Now()) {
			return rec, e.Revision(), nil
		}
		p := rec.Pending
		for coll, part := range p.Collections {
			done, err := s.journalBelowGone(ctx, events.JournalSubject(auth, coll), part.Below)
			if err != nil {
				return rec, 0, err
			}
			if done {
				rec.Snapshot, rec.CutSeconds = p.Snapshot, p.CutSeconds
				rec.Removed.Sum.AddSum(&part.Removed.Sum)
				rec.Removed.Count += part.Removed.Count
			}
		}
		rec.Pending = nil
		b, _ := json.Marshal(rec)
		rev, err := s.pruned.Update(ctx, string(auth), b, e.Revision())
		if err == nil {
			return rec, rev, nil
		}
		if !isKVConflict(err) {
			return rec, 0, events.Wrap(events.ReasonUnavailable, err, "settle the prune record")
		}
		// Another replica settled it first: read its result.
	}
}

// recordRestore counts what a restore left out back into this peer's
// fingerprints: the facts before the snapshot's cut that JOURNAL does not
// hold, since a snapshot keeps only those its documents need. They are
// recorded as removed, the way a prune records what it removes, so that a
// snapshot at a later cut counts every fact before it and this peer can
// approve it. Their id sum is the manifest's less held, the sum of the
// facts JOURNAL holds before the cut (the snapshot's, and any this peer
// had).
func (s *Service) recordRestore(ctx context.Context, auth events.AuthorityID, v *Verified, held idSum) error {
	cut, total := v.Manifest.Cut, v.Manifest.Summary
	if held.Count > total.Count {
		return events.Errorf(events.ReasonConflict, "JOURNAL holds %d facts of %s before cut %d, more than the %d the snapshot counts: this peer has facts its creator did not",
			held.Count, auth, cut, total.Count)
	}
	removed := idSum{Sum: total.Sum, Count: total.Count - held.Count}
	removed.Sum.SubSum(&held.Sum)
	for {
		rec, rev, err := s.readPruned(ctx, auth, false)
		if err != nil {
			return err
		}
		if rec.Pending != nil {
			return events.Errorf(events.ReasonUnavailable, "a prune of %s is under way; the restore completes once it ends", auth)
		}
		if rec.CutSeconds >= cut {
			return nil // recorded by a restore that was cut short, or pruned past it since
		}
		rec.Snapshot, rec.CutSeconds, rec.Removed = v.ID, cut, removed
		b, _ := json.Marshal(rec)
		if rev == 0 {
			_, err = s.pruned.Create(ctx, string(auth), b)
		} else {
			_, err = s.pruned.Update(ctx, string(auth), b, rev)
		}
		if err == nil {
			return nil
		}
		if !isKVConflict(err) {
			return events.Wrap(events.ReasonUnavailable, err, "record what the restore left out")
		}
	}
}

// journalBelowGone reports whether JOURNAL holds no message on subject
// below seq.
func (s *Service) journalBelowGone(ctx context.Context, subject string, seq uint64) (bool, error) {
	journal, err := s.env.JS.Stream(ctx, events.StreamJournal)
	if err != nil {
		return false, events.Wrap(events.ReasonUnavailable, err, "open JOURNAL")
	}
	first, err := journal.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true, nil
	}
	if err != nil {
		return false, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
	}
	return first.Sequence >= seq, nil
}

func isKVConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// build builds the snapshot of auth at cut from this peer's JOURNAL,
// counting what its prunes removed back into the fingerprint. A cut below
// a prune's cannot be built: the facts between them are gone.
func (s *Service) build(ctx context.Context, auth events.AuthorityID, cut uint32, seen func(*events.Fact, uint64)) (*Builder, prunedRecord, uint64, error) {
	rec, rev, err := s.readPruned(ctx, auth, false)
	if err != nil {
		return nil, rec, 0, err
	}
	if p := rec.Pending; p != nil {
		return nil, rec, 0, events.Errorf(events.ReasonUnavailable, "a prune of %s to cut %d is under way (the guard removes nothing after %s): what it removes counts in the fingerprint only once it ends; retry then",
			auth, p.CutSeconds, p.NotAfter.UTC().Format(time.RFC3339))
	}
	if cut < rec.settledCut() {
		return nil, rec, 0, events.Errorf(events.ReasonConflict, "this peer pruned the history of %s before cut %d; it cannot build a snapshot at the earlier cut %d", auth, rec.settledCut(), cut)
	}
	b, err := buildFromJournal(ctx, s.env.JS, auth, cut, rec.base(), seen)
	return b, rec, rev, err
}

// Prune drops auth's JOURNAL history before its latest committed
// snapshot's cut, under the authority's writer fence. creds are presented
// to the guard, which checks their `snapshot` right again.
func (s *Service) Prune(ctx context.Context, auth events.AuthorityID, creds Credentials) (events.SnapshotPruned, error) {
	<-s.ready
	l, err := s.fence.Acquire(ctx, auth)
	if err != nil {
		return events.SnapshotPruned{}, err
	}
	// Released with the token as last renewed: a stale one frees nothing.
	defer func() { s.fence.Release(context.WithoutCancel(ctx), l) }()
	stop := s.keepFence(ctx, &l)
	out, err := s.pruneFenced(ctx, auth, creds)
	if lost := stop(); lost != nil {
		// The pending record, not the fence, keeps others from counting a
		// prune under way; say it, for whoever wonders why the fence moved.
		s.env.Log.Warn("snapshot: lost the writer fence during a prune", "authority", auth, "err", lost)
	}
	return out, err
}

// pruneFenced is Prune with the fence held.
func (s *Service) pruneFenced(ctx context.Context, auth events.AuthorityID, creds Credentials) (events.SnapshotPruned, error) {
	var info events.SnapshotInfo
	var ok bool
	if err := s.log.read(ctx, func(l *Ledger) { info, ok = l.Latest(auth) }); err != nil {
		return events.SnapshotPruned{}, err
	}
	if !ok {
		return events.SnapshotPruned{}, events.Errorf(events.ReasonNotFound, "authority %s has no committed snapshot on this peer: nothing covers its history, so nothing may be pruned", auth)
	}
	out := events.SnapshotPruned{Authority: auth, Snapshot: info.ID, CutSeconds: info.CutSeconds}
	content, err := s.content(ctx, info.ID)
	if err != nil {
		return out, err
	}
	v, err := Verify(auth, info.Manifest, info.Signatures, content, s.Policy(auth))
	if err != nil {
		return out, err
	}
	plan, rec, rev, err := s.planPrune(ctx, auth, v)
	if err != nil || plan == nil {
		return out, err
	}
	// Record the prune as pending before the guard acts, with the
	// deadline after which the guard removes nothing.
	notAfter := s.env.Clock.Now().Add(s.cfg.PruneTimeout)
	plan.req.NotAfterMillis = notAfter.UnixMilli()
	rec.Pending = &pendingPrune{Snapshot: v.ID, CutSeconds: v.Manifest.Cut, Collections: plan.collections, NotAfter: notAfter}
	b, _ := json.Marshal(rec)
	if rev == 0 {
		_, err = s.pruned.Create(ctx, string(auth), b)
	} else {
		_, err = s.pruned.Update(ctx, string(auth), b, rev)
	}
	if err != nil {
		return out, events.Wrap(events.ReasonConflict, err, "record the prune (another prune of this authority may be running)")
	}
	if s.cfg.beforePruneAsk != nil {
		s.cfg.beforePruneAsk(auth)
	}
	reply, answered, gerr := s.askGuard(ctx, auth, plan.req, creds)
	if !answered {
		// The guard may still be at it: the prune is settled by whoever
		// reads the record after its deadline.
		return out, events.Wrap(events.ReasonUnavailable, gerr, fmt.Sprintf("no answer from the guard about the prune of %s; it removes nothing after %s, and the prune counts (or is dropped) after that", auth, notAfter.UTC().Format(time.RFC3339)))
	}
	// Settle the record against JOURNAL whatever the guard answered: a
	// refusal may come after part of the purge.
	settled, _, err := s.readPruned(context.WithoutCancel(ctx), auth, true)
	if gerr != nil {
		return out, gerr
	}
	if err != nil {
		return out, err
	}
	if settled.CutSeconds != v.Manifest.Cut {
		return out, events.Errorf(events.ReasonInternal, "the guard reported the prune of %s done, but JOURNAL still holds the facts it removes", auth)
	}
	out.Below, out.Facts, out.Messages, out.Republished = plan.req.Below, reply.Facts, reply.Messages, reply.Republished
	body, err := events.EncodeSnapshotPruned(out)
	if err == nil {
		err = s.env.Conn.Publish(events.SnapshotPrunedSubject(auth), body)
	}
	if err != nil {
		s.env.Log.Warn("snapshot: announce prune", "authority", auth, "err", err)
	}
	s.env.Log.Info("snapshot: pruned JOURNAL", "authority", auth, "snapshot", shortID(v.ID), "cut", v.Manifest.Cut, "facts", out.Facts, "messages", out.Messages, "republished", out.Republished)
	return out, nil
}

// plannedPrune is a plan for the guard with the id sums of what it
// removes, per collection.
type plannedPrune struct {
	req         events.GuardPruneRequest
	collections map[string]pendingCollection
}

// planPrune reads JOURNAL twice, as the guard will: first to check that
// JOURNAL before the cut is the snapshot's (same fingerprint and count,
// same documents) and find each collection's last fact before the cut,
// then to sum the facts the prune removes: below that point, those before
// the cut the fold does not need and that have no copy above it. A nil
// plan means there is nothing to remove.
func (s *Service) planPrune(ctx context.Context, auth events.AuthorityID, v *Verified) (*plannedPrune, prunedRecord, uint64, error) {
	cut := v.Manifest.Cut
	before := fold.New()
	lastSeq := map[events.FactID]uint64{}
	lastBefore := map[string]uint64{}
	var beforeCut uint64
	b, rec, rev, err := s.build(ctx, auth, cut, func(f *events.Fact, seq uint64) {
		isBefore := BeforeCut(f, cut)
		if _, seen := lastSeq[f.ID]; !seen && isBefore {
			beforeCut++
		}
		lastSeq[f.ID] = seq
		if isBefore {
			before.Apply(f)
			lastBefore[f.Collection()] = seq
		}
	})
	if err != nil {
		return nil, rec, 0, err
	}
	if rec.settledCut() >= cut {
		return nil, rec, rev, nil // pruned to this cut already
	}
	built, err := b.Build()
	if err != nil {
		return nil, rec, 0, err
	}
	if own := built.Manifest; own.Summary != v.Manifest.Summary || own.StateDigest != v.Manifest.StateDigest {
		return nil, rec, 0, events.Errorf(events.ReasonConflict, "JOURNAL of %s before cut %d is not what snapshot %s covers (fingerprint %s over %d facts, the snapshot says %s over %d): take a new snapshot first",
			auth, cut, shortID(v.ID), own.Summary.Hex(), own.Summary.Count, v.Manifest.Summary.Hex(), v.Manifest.Summary.Count)
	}
	colls := map[string]pendingCollection{}
	gone := map[events.FactID]bool{}
	err = bus.Scan(ctx, s.env.JS, events.StreamJournal, []string{events.JournalAuthorityFilter(auth)}, func(m jetstream.Msg) error {
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		f, err := events.DecodeFact(m.Data())
		if err != nil || f.Authority != auth {
			return nil
		}
		coll := f.Collection()
		below := lastBefore[coll] + 1
		if meta.Sequence.Stream >= below || !BeforeCut(f, cut) || before.Needed(f) || lastSeq[f.ID] >= below || gone[f.ID] {
			return nil
		}
		gone[f.ID] = true
		part := colls[coll]
		part.Below = below
		part.Removed.Sum.Add(&f.ID)
		part.Removed.Count++
		colls[coll] = part
		return nil
	})
	if err != nil {
		return nil, rec, 0, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
	}
	if len(gone) == 0 {
		return nil, rec, rev, nil
	}
	p := &plannedPrune{collections: colls, req: events.GuardPruneRequest{Snapshot: v.ID, CutSeconds: cut, Below: map[string]uint64{}, BeforeCut: beforeCut, Purge: uint64(len(gone))}}
	for coll, part := range colls {
		p.req.Below[coll] = part.Below
	}
	return p, rec, rev, nil
}

// askGuard sends the plan to the guard with creds. answered is false when
// the guard may have received the plan and still be carrying it out (no
// reply in time).
func (s *Service) askGuard(ctx context.Context, auth events.AuthorityID, req events.GuardPruneRequest, creds Credentials) (reply events.GuardPruneReply, answered bool, err error) {
	timeout := s.cfg.PruneTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m := nats.NewMsg(events.ServiceSubject(events.GuardProto, events.GuardOpPrune, auth))
	m.Header = creds.Header(auth)
	bus.InjectTrace(ctx, m.Header)
	m.Data, _ = json.Marshal(req)
	resp, err := s.env.Conn.RequestMsgWithContext(ctx, m)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return reply, true, events.Errorf(events.ReasonUnavailable, "no guard answers prune requests on this peer")
	case err != nil:
		return reply, false, events.Wrap(events.ReasonUnavailable, err, "ask the guard to prune")
	}
	if resp.Header.Get(events.HeaderReason) != "" {
		if e := events.DecodeError(resp.Data); e != nil {
			return reply, true, e
		}
		return reply, true, events.Errorf(events.Reason(resp.Header.Get(events.HeaderReason)), "the guard refused the prune")
	}
	if err := json.Unmarshal(resp.Data, &reply); err != nil {
		return reply, true, events.Wrap(events.ReasonMalformed, err, "decode the guard's prune reply")
	}
	return reply, true, nil
}

// Floor says what this peer's snapshots settle for auth: the cut below
// which it reconciles nothing (it pruned to it, or restored from a
// snapshot at it), and its newest committed snapshot, which a peer that
// needs the history before that cut restores from instead.
func (s *Service) Floor(ctx context.Context, auth events.AuthorityID) (events.SnapshotFloor, error) {
	<-s.ready
	var out events.SnapshotFloor
	rec, _, err := s.readPruned(ctx, auth, false)
	if err != nil {
		return out, err
	}
	out.SettledCut = rec.settledCut()
	marker, found, err := ReadRestoreMarker(ctx, s.restore.Markers, auth)
	if err != nil {
		return out, err
	}
	if found && marker.State == events.SnapshotPhaseComplete {
		out.SettledCut = max(out.SettledCut, marker.CutSeconds)
	}
	var latest events.SnapshotInfo
	var ok bool
	if err := s.log.read(ctx, func(l *Ledger) { latest, ok = l.Latest(auth) }); err != nil {
		return out, err
	}
	if ok {
		out.Latest, out.LatestCut, out.LatestFingerprint, out.LatestCount = latest.ID, latest.CutSeconds, latest.Fingerprint, latest.Count
	}
	return out, nil
}

// settledCut is the cut Floor reports, for the restorer: restoring a
// snapshot at or before it would bring back facts this peer pruned.
func (s *Service) settledCut(ctx context.Context, auth events.AuthorityID) (uint32, error) {
	rec, _, err := s.readPruned(ctx, auth, false)
	return rec.settledCut(), err
}

// defaultPruneTimeout bounds the guard's work on one prune: it reads the
// authority's JOURNAL twice and writes the kept facts again. It stays
// below events.LongRequestTimeout, so the caller of a prune hears how the
// guard's part went.
const defaultPruneTimeout = 10 * time.Minute
