package sim_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"maps"
	"slices"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/faults/sim"
	"github.com/factsync/factsync/shared/fold"
)

// copyFold is a copy of shared/fold's lattice with its version comparison
// swappable, so that a test build can break the tie-break without touching
// the real fold. With events.Version.Compare it folds exactly as
// shared/fold does (TestFoldCopyMatchesRealFold checks that).
type copyFold struct {
	compare func(a, b events.Version) int
	docs    map[[2]string]*copyDoc
}

type copyDoc struct {
	deleted, latest events.Version
	fields          map[string]copyField
}

type copyField struct {
	value   json.RawMessage
	version events.Version
}

// flippedTieBreak is the injected bug: two versions with equal HLCs compare
// as equal, so the fact that arrived first keeps the field. Reversing the
// FactID order instead would still be a total order, and so still
// converge; what breaks convergence is a tie-break that depends on arrival.
func flippedTieBreak(a, b events.Version) int { return a.HLC.Compare(b.HLC) }

func newCopyFold(compare func(a, b events.Version) int) *copyFold {
	return &copyFold{compare: compare, docs: map[[2]string]*copyDoc{}}
}

func flippedFold() sim.Folder { return newCopyFold(flippedTieBreak) }

func (c *copyFold) Apply(f *events.Fact) {
	key := [2]string{f.Collection(), f.Document()}
	d := c.docs[key]
	if d == nil {
		d = &copyDoc{fields: map[string]copyField{}}
		c.docs[key] = d
	}
	v := events.VersionOf(f)
	if c.compare(v, d.latest) > 0 {
		d.latest = v
	}
	if f.IsDelete() {
		if c.compare(v, d.deleted) <= 0 {
			return
		}
		d.deleted = v
		for name, fl := range d.fields {
			if c.compare(fl.version, v) < 0 {
				delete(d.fields, name)
			}
		}
		return
	}
	if c.compare(v, d.deleted) < 0 {
		return
	}
	for name, value := range f.Fields() {
		if cur, ok := d.fields[name]; ok && c.compare(v, cur.version) <= 0 {
			continue
		}
		d.fields[name] = copyField{value: value, version: v}
	}
}

// Documents lists the documents in (collection, id) order, as
// shared/fold's Collections and Documents do.
func (c *copyFold) Documents() []events.Document {
	keys := slices.SortedFunc(maps.Keys(c.docs), func(a, b [2]string) int {
		if a[0] != b[0] {
			return cmpString(a[0], b[0])
		}
		return cmpString(a[1], b[1])
	})
	out := make([]events.Document, 0, len(keys))
	for _, k := range keys {
		d := c.docs[k]
		doc := events.Document{Collection: k[0], ID: k[1], Fields: map[string]json.RawMessage{}, Version: d.latest}
		for name, fl := range d.fields {
			doc.Fields[name] = fl.value
		}
		doc.Deleted = !d.deleted.IsZero() && len(d.fields) == 0
		out = append(out, doc)
	}
	return out
}

func (c *copyFold) Digest() [32]byte {
	b, _ := json.Marshal(c.Documents())
	return sha256.Sum256(b)
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// realDocuments lists a shared/fold State's documents in the same order.
func realDocuments(s *fold.State) []events.Document {
	var out []events.Document
	for _, coll := range s.Collections() {
		for d := range s.Documents(coll) {
			out = append(out, d)
		}
	}
	return out
}

// pairFold runs the real fold and the unbroken copy side by side and
// records any fact after which their documents differ.
type pairFold struct {
	real     *fold.State
	copy     *copyFold
	mismatch *[]string
}

func (p pairFold) Apply(f *events.Fact) {
	p.real.Apply(f)
	p.copy.Apply(f)
	a, _ := json.Marshal(realDocuments(p.real))
	b, _ := json.Marshal(p.copy.Documents())
	if !bytes.Equal(a, b) {
		*p.mismatch = append(*p.mismatch, "after fact "+f.ID.String()+":\n real "+string(a)+"\n copy "+string(b))
	}
}

func (p pairFold) Digest() [32]byte { return p.real.Digest() }

func eventsCompare(a, b events.Version) int { return a.Compare(b) }
