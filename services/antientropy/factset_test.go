package antientropy

import (
	"slices"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/riblt"
)

// The JOURNAL index is keyed by riblt prefix. Two facts sharing a prefix
// (which honest ids never do) are both found under it, each is indexed
// and coded once, and a later copy of a fact moves where it is read.
func TestFactSetFindsFactsByPrefix(t *testing.T) {
	set := New(Config{SketchSize: 64}).newSet()
	fact := func(id events.FactID) *events.Fact {
		return &events.Fact{ID: id, HLC: events.HLC{WallMillis: 1_700_000_000_000}}
	}
	var alone, first, twin events.FactID
	alone[0], first[0] = 1, 2
	twin = first
	twin[riblt.PrefixSize] = 0xff // same prefix, another fact

	set.insert(fact(alone), 1)
	set.insert(fact(alone), 2) // a later copy
	if got := set.locate(riblt.PrefixOf(alone)); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("a fact stored twice is read at %v, want its later copy at 2", got)
	}
	set.insert(fact(first), 3)
	set.insert(fact(twin), 4)
	set.insert(fact(twin), 5)
	got := set.locate(riblt.PrefixOf(first))
	for _, seq := range []uint64{3, 4, 5} {
		if !slices.Contains(got, seq) {
			t.Fatalf("two facts under one prefix are read at %v, want 3 (one) and 4 or 5 (the other)", got)
		}
	}
	if n := set.index.Len(); n != 3 {
		t.Fatalf("the index holds %d facts, want 3", n)
	}
	if n := set.sketch.Len(); n != 3 {
		t.Fatalf("the sketch codes %d facts, want 3", n)
	}
	var none events.FactID
	if got := set.locate(riblt.PrefixOf(none)); got != nil {
		t.Fatalf("an unknown prefix is read at %v", got)
	}
	ref := factRef{prefix: riblt.PrefixOf(first)}
	if !ref.matches(first) || !ref.matches(twin) || ref.matches(alone) {
		t.Fatal("a prefix ref must match exactly the facts under its prefix")
	}
	if whole := idRefs([]events.FactID{first})[0]; !whole.matches(first) || whole.matches(twin) {
		t.Fatal("an id ref must match exactly its fact")
	}
}
