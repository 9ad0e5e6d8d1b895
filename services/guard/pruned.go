package guard

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/fold"
	"github.com/nats-io/nats.go/jetstream"
)

// Pruned facts that arrive again (docs/snapshot.md). A prune removes facts
// before its cut that the fold of the facts before the cut supersedes
// (fold.Supersedes). The snapshot service counts them in its fingerprints
// from then on, so one stored again (a client replays it, a peer pushes
// it, after JOURNAL's dedup window) would be counted twice and this
// peer's later snapshots would not match its peers'. The guard therefore
// refuses, with ReasonPruned, a fact before an authority's prune cut that
// what JOURNAL holds before the cut supersedes: it is either a removed
// fact, already known, or a new one that could never show. A fact that
// does change the documents before the cut is accepted as ever.

// prunedFloors knows each authority's prune cut (events.PrunedFloorBucket,
// watched so every guard replica knows every prune) and keeps, per
// authority that receives facts before its cut, the fold of the facts
// before the cut, brought up to date from JOURNAL when used. It is safe
// for concurrent use.
type prunedFloors struct {
	js      jetstream.JetStream
	journal jetstream.Stream
	kv      jetstream.KeyValue

	mu   sync.Mutex
	cuts map[events.AuthorityID]uint32

	foldMu sync.Mutex // serialises foldBefore, which reads JOURNAL
	before map[events.AuthorityID]*foldBeforeCut
}

// maxFoldsBeforeCut bounds the folds kept; past it they are dropped and
// built again when next needed.
const maxFoldsBeforeCut = 1024

// foldBeforeCut is the fold of an authority's JOURNAL facts before cut, as
// of JOURNAL sequence through.
type foldBeforeCut struct {
	cut     uint32
	through uint64
	state   *fold.State
}

// prunedFloor is the value stored per authority.
type prunedFloor struct {
	CutSeconds uint32 `json:"cut_seconds"`
	Snapshot   string `json:"snapshot"`
}

func prunedFloorBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      events.PrunedFloorBucket,
		Description: "per authority, the cut this peer's JOURNAL was pruned to",
		Storage:     jetstream.FileStorage,
		History:     1,
	}
}

// watchPrunedFloors provisions the bucket and follows it until ctx ends. It
// returns once the cuts already recorded are loaded, so no pruned fact
// passes after Ready.
func watchPrunedFloors(ctx context.Context, js jetstream.JetStream, journal jetstream.Stream, log *slog.Logger) (*prunedFloors, error) {
	kv, err := provisionKV(ctx, js, prunedFloorBucket())
	if err != nil {
		return nil, err
	}
	p := &prunedFloors{js: js, journal: journal, kv: kv, cuts: map[events.AuthorityID]uint32{}, before: map[events.AuthorityID]*foldBeforeCut{}}
	err = followKV(ctx, kv, "prune cuts", func(entry jetstream.KeyValueEntry) {
		var f prunedFloor
		if err := json.Unmarshal(entry.Value(), &f); err != nil {
			log.Warn("ignoring a malformed prune cut", "authority", entry.Key(), "err", err)
			return
		}
		p.raise(events.AuthorityID(entry.Key()), f.CutSeconds)
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// raise moves auth's cut up to cut; a cut never goes down.
func (p *prunedFloors) raise(auth events.AuthorityID, cut uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cuts[auth] = max(p.cuts[auth], cut)
}

// record stores auth's prune cut before the prune removes anything, and
// applies it here at once. From then on the facts before the cut that
// JOURNAL supersedes are refused, removed or not yet: a fact still in
// JOURNAL is a duplicate anyway.
func (p *prunedFloors) record(ctx context.Context, auth events.AuthorityID, cut uint32, snapshot string) error {
	p.mu.Lock()
	known := p.cuts[auth]
	p.mu.Unlock()
	if known >= cut {
		return nil
	}
	b, _ := json.Marshal(prunedFloor{CutSeconds: cut, Snapshot: snapshot})
	if _, err := p.kv.Put(ctx, string(auth), b); err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "record the prune cut")
	}
	p.raise(auth, cut)
	return nil
}

// screen moves the accepted facts of v that are before their authority's
// prune cut and superseded by what JOURNAL holds before it to v's
// denials, with ReasonPruned. An error means JOURNAL could not be read:
// the message must be decided again later.
func (p *prunedFloors) screen(ctx context.Context, subject string, v *verdict, now time.Time) error {
	kept := v.accepted[:0]
	for _, f := range v.accepted {
		p.mu.Lock()
		cut := p.cuts[f.Authority]
		p.mu.Unlock()
		if f.HLC.Seconds() >= cut {
			kept = append(kept, f)
			continue
		}
		before, err := p.foldBefore(ctx, f.Authority, cut)
		if err != nil {
			return err
		}
		if !before.Supersedes(f) {
			kept = append(kept, f)
			continue
		}
		err = events.Errorf(events.ReasonPruned, "fact %s is before cut %d, to which this peer pruned the history of %s, and what it holds before the cut supersedes it: the fact was pruned, or could never show; it is not stored again", f.ID, cut, f.Authority)
		v.denials = append(v.denials, denial(subject, err, f, f.Marshal(), now))
	}
	v.accepted = kept
	return nil
}

// foldBefore returns the fold of auth's JOURNAL facts before cut, reading
// only what JOURNAL gained since the last call (the whole authority the
// first time, or when the cut moved). Facts a prune removes change
// nothing in it, so a purge needs no reread.
func (p *prunedFloors) foldBefore(ctx context.Context, auth events.AuthorityID, cut uint32) (*fold.State, error) {
	p.foldMu.Lock()
	defer p.foldMu.Unlock()
	fb := p.before[auth]
	if fb == nil || fb.cut != cut {
		fb = &foldBeforeCut{cut: cut, state: fold.New()}
	}
	last, err := p.journal.GetLastMsgForSubject(ctx, events.JournalAuthorityFilter(auth))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return fb.state, nil
	case err != nil:
		return nil, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
	}
	if last.Sequence > fb.through {
		err := bus.ScanFrom(ctx, p.js, events.StreamJournal, []string{events.JournalAuthorityFilter(auth)}, fb.through+1, func(m jetstream.Msg) error {
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			if meta.Sequence.Stream > last.Sequence {
				return errScanDone
			}
			fb.through = meta.Sequence.Stream
			if f, err := events.DecodeFact(m.Data()); err == nil && f.Authority == auth && f.HLC.Seconds() < cut {
				fb.state.Apply(f)
			}
			return nil
		})
		if err != nil && !errors.Is(err, errScanDone) {
			return nil, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
		}
	}
	if len(p.before) >= maxFoldsBeforeCut {
		clear(p.before)
	}
	p.before[auth] = fb
	return fb.state, nil
}
