package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/fold"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Pruning JOURNAL (docs/snapshot.md, "Pruning"). JOURNAL is the guard's
// stream, so only the guard removes history from it. The snapshot service
// plans a prune against a committed, verified snapshot and sends the plan
// on ServiceSubject(GuardProto, GuardOpPrune, auth), which only services
// may publish, with the credentials of whoever started it. The guard
// trusts none of the plan: it checks the token's `snapshot` right and the
// policy again, then reads the authority's JOURNAL and carries the plan out
// only if removing it cannot change anything a reader of JOURNAL derives:
//
//   - only facts before the cut that the fold of the facts before the cut
//     does not need (fold.Needed) go; every other fact below a
//     collection's Below stays, written again at the end of JOURNAL
//     before anything is removed when it has no copy above Below;
//   - JOURNAL holds exactly BeforeCut distinct facts before the cut, the
//     number the plan was made from (a late fact would change what is
//     needed);
//   - the plan removes exactly Purge distinct facts, the number the
//     snapshot service accounted for in its fingerprints;
//   - folding what stays gives the documents folding everything gives;
//   - every attached consumer of JOURNAL has been delivered past what
//     goes, so no reader (the receipts log above all) misses a fact.
//
// JOURNAL's subjects are per collection, so each collection is cut at its
// own sequence: facts of one collection after the cut do not hold back
// the prune of another.

// servePrune answers prune plans.
func (g *running) servePrune(ctx context.Context) (*nats.Subscription, error) {
	return g.env.Conn.QueueSubscribe(events.ServiceSubject(events.GuardProto, events.GuardOpPrune, "*"), Name, func(m *nats.Msg) {
		if !g.startRequest() {
			g.reply(m, nil, events.Errorf(events.ReasonUnavailable, "the guard is shutting down"))
			return
		}
		go func() {
			defer g.requests.Done()
			reply, err := g.prune(ctx, m)
			var out *nats.Msg
			if err == nil {
				b, _ := json.Marshal(reply)
				out = &nats.Msg{Data: b}
			} else {
				g.log.Warn("prune refused", "subject", m.Subject, "err", err)
			}
			g.reply(m, out, err)
		}()
	})
}

// prune checks and carries out one prune plan. Prunes run one at a time.
func (g *running) prune(ctx context.Context, m *nats.Msg) (events.GuardPruneReply, error) {
	addr, err := events.ParseAPISubject(events.ServicePrefix, m.Subject)
	if err != nil {
		return events.GuardPruneReply{}, err
	}
	right := capability.Right{Collection: capability.AnyCollection, Op: capability.OpSnapshot}
	if _, err := g.authorize(ctx, m, addr, right, g.env.Clock.Now()); err != nil {
		return events.GuardPruneReply{}, err
	}
	var req events.GuardPruneRequest
	dec := json.NewDecoder(bytes.NewReader(m.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return events.GuardPruneReply{}, events.Wrap(events.ReasonMalformed, err, "prune plan does not decode")
	}
	if err := g.pruneInTime(req); err != nil {
		return events.GuardPruneReply{}, err
	}
	if req.CutSeconds == 0 || len(req.Below) == 0 {
		return events.GuardPruneReply{}, events.Errorf(events.ReasonMalformed, "prune plan needs a cut and a JOURNAL sequence per collection")
	}
	lastGone := uint64(0)
	for coll, below := range req.Below {
		if err := events.CheckName("collection", coll); err != nil {
			return events.GuardPruneReply{}, err
		}
		lastGone = max(lastGone, below-1)
	}
	g.pruneMu.Lock()
	defer g.pruneMu.Unlock()
	plan, err := g.planPrune(ctx, addr.Authority, req)
	if err != nil {
		return events.GuardPruneReply{}, err
	}
	if err := g.readersPast(ctx, addr.Authority, lastGone); err != nil {
		return events.GuardPruneReply{}, err
	}
	// Write the kept facts again first: a failure from here on leaves
	// JOURNAL with more copies, never fewer.
	if len(plan.republish) > 0 {
		msgs := make([]*nats.Msg, len(plan.republish))
		for i, f := range plan.republish {
			// A Nats-Msg-Id of its own: the fact's id may still be in the
			// dedup window, which would drop the copy and lose the fact.
			msgs[i] = journalMsg(events.JournalSubject(f.Authority, f.Collection()), fmt.Sprintf("prune:%s:%d:%s", req.Snapshot, req.Below[f.Collection()], f.ID), f.Marshal(), nil)
		}
		for start := 0; start < len(msgs); start += g.journal.maxBatch {
			if err := g.journal.publishAtomic(ctx, msgs[start:min(start+g.journal.maxBatch, len(msgs))]); err != nil {
				return events.GuardPruneReply{}, events.Wrap(events.ReasonUnavailable, err, "write the kept facts again")
			}
		}
	}
	journal, err := g.env.JS.Stream(ctx, events.StreamJournal)
	if err != nil {
		return events.GuardPruneReply{}, events.Wrap(events.ReasonUnavailable, err, "open JOURNAL")
	}
	// Before anything goes: a removed fact that arrives again is refused.
	if err := g.prunedFloors.record(ctx, addr.Authority, req.CutSeconds, req.Snapshot); err != nil {
		return events.GuardPruneReply{}, err
	}
	for _, coll := range slices.Sorted(maps.Keys(req.Below)) {
		if err := g.pruneInTime(req); err != nil {
			return events.GuardPruneReply{}, err
		}
		err := journal.Purge(ctx, jetstream.WithPurgeSubject(events.JournalSubject(addr.Authority, coll)), jetstream.WithPurgeSequence(req.Below[coll]))
		if err != nil {
			return events.GuardPruneReply{}, events.Wrap(events.ReasonUnavailable, err, "purge JOURNAL")
		}
	}
	g.log.Info("pruned JOURNAL", "authority", addr.Authority, "snapshot", req.Snapshot, "cut", req.CutSeconds,
		"facts", plan.purged, "messages", plan.messages, "republished", len(plan.republish))
	return events.GuardPruneReply{Facts: plan.purged, Messages: plan.messages, Republished: len(plan.republish)}, nil
}

// pruneInTime refuses a plan past its deadline: its sender may have
// settled the prune against JOURNAL already, so removing more now would
// remove facts nobody counts.
func (g *running) pruneInTime(req events.GuardPruneRequest) error {
	if req.NotAfterMillis == 0 {
		return nil
	}
	if now := g.env.Clock.Now(); now.UnixMilli() > req.NotAfterMillis {
		return events.Errorf(events.ReasonExpired, "the prune plan's deadline %s has passed (now %s): nothing more is removed; plan again",
			time.UnixMilli(req.NotAfterMillis).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// prunePlan is a checked plan: the facts to write again, and what goes.
type prunePlan struct {
	republish []*events.Fact
	purged    uint64 // distinct facts removed
	messages  uint64 // JOURNAL messages removed
}

// planPrune reads the authority's JOURNAL twice (first the folds, then what
// stays) and checks req against it.
func (g *running) planPrune(ctx context.Context, auth events.AuthorityID, req events.GuardPruneRequest) (*prunePlan, error) {
	filters := []string{events.JournalAuthorityFilter(auth)}
	all, before := fold.New(), fold.New()
	lastSeq := map[events.FactID]uint64{} // the last copy of each fact
	var through uint64                    // the last message read in the first pass
	beforeCut := uint64(0)
	err := bus.Scan(ctx, g.env.JS, events.StreamJournal, filters, func(m jetstream.Msg) error {
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		through = meta.Sequence.Stream
		f, err := events.DecodeFact(m.Data())
		if err != nil || f.Authority != auth {
			return nil // not an accepted fact: no reader folds it
		}
		isBefore := f.HLC.Seconds() < req.CutSeconds
		if _, seen := lastSeq[f.ID]; !seen && isBefore {
			beforeCut++
		}
		lastSeq[f.ID] = through
		all.Apply(f)
		if isBefore {
			before.Apply(f)
		}
		return nil
	})
	if err != nil {
		return nil, prunePlanErr(err)
	}
	if beforeCut != req.BeforeCut {
		return nil, events.Errorf(events.ReasonConflict, "JOURNAL holds %d facts of %s before cut %d, the plan was made from %d; plan again", beforeCut, auth, req.CutSeconds, req.BeforeCut)
	}
	plan := &prunePlan{}
	stays := fold.New()
	gone := map[events.FactID]bool{}
	queued := map[events.FactID]bool{}
	err = bus.Scan(ctx, g.env.JS, events.StreamJournal, filters, func(m jetstream.Msg) error {
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		seq := meta.Sequence.Stream
		if seq > through {
			return errScanDone
		}
		below, planned := req.Below[collectionOf(m.Subject())]
		if !planned || seq >= below {
			if f, err := events.DecodeFact(m.Data()); err == nil && f.Authority == auth {
				stays.Apply(f)
			}
			return nil
		}
		plan.messages++
		f, err := events.DecodeFact(m.Data())
		if err != nil || f.Authority != auth {
			return nil
		}
		copyStays := lastSeq[f.ID] >= below // all copies of a fact share its collection's subject
		if f.HLC.Seconds() < req.CutSeconds && !before.Needed(f) {
			if !copyStays {
				gone[f.ID] = true
			}
			return nil
		}
		stays.Apply(f)
		if !copyStays && !queued[f.ID] {
			queued[f.ID] = true
			plan.republish = append(plan.republish, f)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errScanDone) {
		return nil, prunePlanErr(err)
	}
	plan.purged = uint64(len(gone))
	if plan.purged != req.Purge {
		return nil, events.Errorf(events.ReasonConflict, "the plan removes %d facts of %s by this JOURNAL, it was made to remove %d; plan again", plan.purged, auth, req.Purge)
	}
	if stays.Digest() != all.Digest() {
		return nil, events.Errorf(events.ReasonConflict, "the prune of %s would change its documents", auth)
	}
	return plan, nil
}

// collectionOf is the collection token of a JOURNAL fact subject.
func collectionOf(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// errScanDone ends a scan early.
var errScanDone = errors.New("scan done")

func prunePlanErr(err error) error {
	if events.ReasonOf(err) != events.ReasonInternal {
		return err
	}
	return events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
}

// readersPast refuses (unavailable, retry later) while a consumer of
// JOURNAL that is attached (a pull request waiting, or a push subscriber
// bound), reads the authority's facts and still has messages to deliver
// has not been delivered every message up to last, the last one the prune
// may remove: it would never see the facts the prune removes. The receipts
// log, which must hold every accepted fact, reads JOURNAL so. A consumer
// nobody pulls from is a reader that stopped (JOURNAL's ordered consumers
// linger for minutes); a reader that is down is not seen at all
// (docs/snapshot.md).
func (g *running) readersPast(ctx context.Context, auth events.AuthorityID, last uint64) error {
	journal, err := g.env.JS.Stream(ctx, events.StreamJournal)
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "open JOURNAL")
	}
	consumers := journal.ListConsumers(ctx)
	for info := range consumers.Info() {
		attached := info.NumWaiting > 0 || info.PushBound
		if !attached || !readsAuthority(info.Config, auth) || info.NumPending == 0 || info.Delivered.Stream >= last {
			continue
		}
		return events.Errorf(events.ReasonUnavailable, "JOURNAL consumer %s has read up to sequence %d, the prune removes up to %d; retry once it has caught up", info.Name, info.Delivered.Stream, last)
	}
	if err := consumers.Err(); err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "list JOURNAL consumers")
	}
	return nil
}

// readsAuthority reports whether a consumer's filters take facts of auth.
func readsAuthority(c jetstream.ConsumerConfig, auth events.AuthorityID) bool {
	filters := c.FilterSubjects
	if c.FilterSubject != "" {
		filters = append(filters, c.FilterSubject)
	}
	if len(filters) == 0 {
		return true
	}
	subject := events.JournalSubject(auth, "x")
	for _, f := range filters {
		if subjectMatches(f, subject) {
			return true
		}
	}
	return false
}

// subjectMatches reports whether a NATS filter (with * and >) matches a
// literal subject.
func subjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, t := range f {
		if t == ">" {
			return i < len(s)
		}
		if i >= len(s) || t != "*" && t != s[i] {
			return false
		}
	}
	return len(f) == len(s)
}
