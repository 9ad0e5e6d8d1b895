// Package fold folds a journal's facts into documents.
//
// The fold is a join-semilattice over fact sets. For each document it keeps
// the greatest delete and, per field, the put with the greatest Version
// (HLC, then FactID). A field is visible only when its winning put is
// after the greatest delete, so a delete hides every field written before
// it and a later put revives only the fields it writes. Every step is a
// max, so Apply is commutative, associative and idempotent: every order,
// batching and duplication of the same facts gives the same State.
//
// A field whose winner is before the greatest delete can never become
// visible again (a revival needs a put after the delete, which would win
// the field), so the State drops it. That keeps the state canonical: equal
// fact sets give equal States, equal encodings and equal digests.
package fold

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"iter"
	"maps"
	"slices"

	"github.com/factsync/factsync/events"
)

// Document is the folded view of one document.
type Document = events.Document

// State is the fold of one authority's facts. The zero value is not usable;
// call New. A State is not safe for concurrent use.
type State struct {
	collections map[string]map[string]*doc
}

// doc is one document's lattice element.
type doc struct {
	deleted events.Version   // greatest delete, zero if none
	fields  map[string]field // winners after deleted only
	latest  events.Version   // greatest fact applied
}

type field struct {
	value   json.RawMessage
	version events.Version
}

// New returns an empty State.
func New() *State {
	return &State{collections: map[string]map[string]*doc{}}
}

// Change describes what one Apply did to a document's visible state.
// Before is the document as it was (zero Version when it did not exist);
// After is the document now.
type Change struct {
	Before Document
	After  Document
	Fact   events.FactID
}

// Apply folds one fact into the state. It reports the change and whether
// the document's visible state (fields or Deleted) changed. A fact applied
// again, or one that loses to what is already there, changes nothing
// visible.
func (s *State) Apply(f *events.Fact) (Change, bool) {
	coll, id := f.Collection(), f.Document()
	docs := s.collections[coll]
	if docs == nil {
		docs = map[string]*doc{}
		s.collections[coll] = docs
	}
	d := docs[id]
	if d == nil {
		d = &doc{fields: map[string]field{}}
		docs[id] = d
	}
	before := d.document(coll, id)
	v := events.VersionOf(f)
	if v.Compare(d.latest) > 0 {
		d.latest = v
	}
	changed := false
	if f.IsDelete() {
		changed = d.applyDelete(v)
	} else {
		changed = d.applyPut(v, f.Fields())
	}
	return Change{Before: before, After: d.document(coll, id), Fact: f.ID}, changed
}

func (d *doc) applyDelete(v events.Version) bool {
	if v.Compare(d.deleted) <= 0 {
		return false
	}
	wasDeleted := d.isDeleted()
	d.deleted = v
	changed := !wasDeleted && len(d.fields) == 0
	for name, fl := range d.fields {
		if fl.version.Compare(v) < 0 {
			delete(d.fields, name)
			changed = true
		}
	}
	return changed
}

func (d *doc) applyPut(v events.Version, fields map[string]json.RawMessage) bool {
	if v.Compare(d.deleted) < 0 {
		return false
	}
	changed := false
	for name, value := range fields {
		cur, ok := d.fields[name]
		if ok && v.Compare(cur.version) <= 0 {
			continue
		}
		d.fields[name] = field{value: value, version: v}
		// Rewriting a field with the bytes it already shows moves its
		// version but changes nothing anyone can see.
		changed = changed || !ok || !bytes.Equal(cur.value, value)
	}
	return changed
}

// isDeleted reports whether a delete hides the whole document.
func (d *doc) isDeleted() bool { return !d.deleted.IsZero() && len(d.fields) == 0 }

func (d *doc) document(coll, id string) Document {
	out := Document{Collection: coll, ID: id, Fields: make(map[string]json.RawMessage, len(d.fields)), Deleted: d.isDeleted(), Version: d.latest}
	for name, fl := range d.fields {
		out.Fields[name] = fl.value
	}
	return out
}

// Needed reports whether f is one of the facts that rebuild s, s being
// the fold of a fact set that holds f: its document's greatest delete, the
// winning put of one of its visible fields, or its latest fact. Folding
// exactly the facts of the set that are Needed gives s again (the same
// greatest deletes, field winners and latest versions), and folding them
// with any other facts gives what folding the whole set with those facts
// would: the fold is a join, and the facts left out each lose to one kept.
// A snapshot's content and a prune's kept facts are the Needed ones.
func (s *State) Needed(f *events.Fact) bool {
	d := s.collections[f.Collection()][f.Document()]
	if d == nil {
		return false
	}
	v := events.VersionOf(f)
	if v == d.latest || v == d.deleted {
		return true
	}
	if f.IsDelete() {
		return false
	}
	for name := range f.Fields() {
		if fl, ok := d.fields[name]; ok && fl.version == v {
			return true
		}
	}
	return false
}

// Supersedes reports whether s already holds facts that f loses to in
// every respect: a later fact of its document, for a delete a later
// delete, and for a put, on each of its fields, a later winner or (the
// field hidden) a later delete. Folding f into s then changes nothing,
// and f is not Needed by the result. Because the fold only grows, f stays
// superseded whatever else is folded: a prune removes exactly such facts
// (Needed is false for each), and the guard refuses them when they come
// back (docs/snapshot.md, "Pruned facts that arrive again").
func (s *State) Supersedes(f *events.Fact) bool {
	d := s.collections[f.Collection()][f.Document()]
	if d == nil {
		return false
	}
	v := events.VersionOf(f)
	if v.Compare(d.latest) >= 0 {
		return false
	}
	if f.IsDelete() {
		return v.Compare(d.deleted) < 0
	}
	for name := range f.Fields() {
		over := d.deleted // a hidden field: only the delete beats f
		if fl, ok := d.fields[name]; ok {
			over = fl.version
		}
		if v.Compare(over) >= 0 {
			return false
		}
	}
	return true
}

// Get returns one document, including a deleted one (Deleted set).
func (s *State) Get(coll, id string) (Document, bool) {
	d, ok := s.collections[coll][id]
	if !ok {
		return Document{}, false
	}
	return d.document(coll, id), true
}

// Collections returns the collection names in ascending order.
func (s *State) Collections() []string {
	return slices.Sorted(maps.Keys(s.collections))
}

// Len returns the number of documents in coll, deleted ones included.
func (s *State) Len(coll string) int { return len(s.collections[coll]) }

// IDs returns the document ids of coll in ascending order, deleted ones
// included.
func (s *State) IDs(coll string) []string {
	return slices.Sorted(maps.Keys(s.collections[coll]))
}

// Documents yields the documents of coll in ascending id order, deleted
// ones included. The state must not change during the iteration.
func (s *State) Documents(coll string) iter.Seq[Document] {
	return func(yield func(Document) bool) {
		docs := s.collections[coll]
		for _, id := range s.IDs(coll) {
			if !yield(docs[id].document(coll, id)) {
				return
			}
		}
	}
}

// Digest is SHA-256 of the canonical encoding (MarshalBinary). Equal fact
// sets give equal digests whatever order they were applied in.
func (s *State) Digest() [32]byte {
	b, _ := s.MarshalBinary()
	return sha256.Sum256(b)
}
