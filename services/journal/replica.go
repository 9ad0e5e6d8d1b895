package journal

import (
	"sync"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/query"
)

// replica is the materialised state of one partition: one fold per
// authority of the partition, the secondary indexes over them, and the
// JOURNAL sequence it reflects. The fold loop writes it; request handlers
// read it concurrently.
type replica struct {
	indexed map[string][]string // collection (or "*") -> indexed fields

	mu      sync.RWMutex
	tip     tip // the last JOURNAL message folded
	folds   map[events.AuthorityID]*fold.State
	indexes map[events.AuthorityID]map[string]*query.Index
}

func newReplica(indexed map[string][]string) *replica {
	return &replica{
		indexed: indexed,
		folds:   map[events.AuthorityID]*fold.State{},
		indexes: map[events.AuthorityID]map[string]*query.Index{},
	}
}

// tip is the last JOURNAL message a state reflects: its sequence and the
// SHA-256 of its data, so a restart can check that the stream still holds
// that message at that sequence before trusting a checkpoint.
type tip struct {
	seq  uint64
	hash [32]byte
}

// folded is one fact of a batch, decoded, with where it came from.
type folded struct {
	fact *events.Fact
	seq  uint64
}

// change is a visible change to publish once the lock is released.
type change struct {
	authority events.AuthorityID
	change    fold.Change
	seq       uint64
}

// apply folds a batch in order and returns the visible changes. through
// is the batch's last JOURNAL message, which the state reflects afterwards
// even when that message was not a fact. Facts at or below the state's
// position are already in it and are skipped: a reader that rewinds to
// cover a newly activated partition never folds a fact twice into the
// others. Lock: takes mu.
func (r *replica) apply(batch []folded, through tip) []change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var changes []change
	for _, b := range batch {
		if b.seq <= r.tip.seq {
			continue
		}
		auth := b.fact.Authority
		st := r.folds[auth]
		if st == nil {
			st = fold.New()
			r.folds[auth] = st
		}
		ch, visible := st.Apply(b.fact)
		if visible {
			if ix := r.indexFor(auth, b.fact.Collection()); ix != nil {
				ix.Update(ch.Before, ch.After)
			}
			changes = append(changes, change{authority: auth, change: ch, seq: b.seq})
		}
	}
	if through.seq > r.tip.seq {
		r.tip = through
	}
	return changes
}

// indexFor returns the index of one collection, creating it when fields are
// declared for it. Lock: mu held for writing.
func (r *replica) indexFor(auth events.AuthorityID, coll string) *query.Index {
	if ix := r.indexes[auth][coll]; ix != nil {
		return ix
	}
	fields := append(append([]string(nil), r.indexed["*"]...), r.indexed[coll]...)
	if len(fields) == 0 {
		return nil
	}
	if r.indexes[auth] == nil {
		r.indexes[auth] = map[string]*query.Index{}
	}
	ix := query.NewIndex(fields...)
	r.indexes[auth][coll] = ix
	return ix
}

// restore replaces the state with a checkpoint's and rebuilds the indexes,
// which are not checkpointed: they are derived and cheap to rebuild.
// Lock: takes mu.
func (r *replica) restore(at tip, folds map[events.AuthorityID]*fold.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tip, r.folds = at, folds
	r.indexes = map[events.AuthorityID]map[string]*query.Index{}
	for auth, st := range folds {
		for _, coll := range st.Collections() {
			ix := r.indexFor(auth, coll)
			if ix == nil {
				continue
			}
			for d := range st.Documents(coll) {
				ix.Update(events.Document{}, d)
			}
		}
	}
}

// read runs fn with the authority's fold and the collection's index (either
// may be nil) under the read lock, and returns the sequence they reflect.
func (r *replica) read(auth events.AuthorityID, coll string, fn func(*fold.State, *query.Index)) uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	fn(r.folds[auth], r.indexes[auth][coll])
	return r.tip.seq
}

// position returns the last JOURNAL sequence folded. Lock: takes mu.
func (r *replica) position() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.tip.seq
}
