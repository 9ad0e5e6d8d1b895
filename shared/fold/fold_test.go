package fold_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/fold"
	"pgregory.net/rapid"
)

var (
	authorityKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	deviceKeys   = []ed25519.PrivateKey{
		ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)),
		ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32)),
	}
	tokenHash = sha256.Sum256([]byte("token"))
)

// tb is what both *testing.T and *rapid.T offer.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
}

// sign builds a real signed fact; fields == nil makes a delete.
func sign(t tb, device ed25519.PrivateKey, hlc events.HLC, coll, id string, fields map[string]any) *events.Fact {
	t.Helper()
	body := &eventsv1.FactBody{
		AuthorityKey: authorityKey.Public().(ed25519.PublicKey),
		Hlc:          &eventsv1.HLC{WallMillis: hlc.WallMillis, Logical: hlc.Logical},
		Collection:   coll,
		Document:     id,
		TokenHash:    tokenHash[:],
	}
	if fields == nil {
		body.Op = &eventsv1.FactBody_Delete{Delete: &eventsv1.Delete{Reason: "test"}}
	} else {
		raw, err := json.Marshal(fields)
		if err != nil {
			t.Fatalf("%v", err)
		}
		body.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: raw}}
	}
	f, err := events.SignFact(device, body)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return f
}

// genFact draws facts from a small space so that collisions on documents,
// fields and HLCs (ties broken by FactID) are common.
func genFact(t *rapid.T) *events.Fact {
	device := deviceKeys[rapid.IntRange(0, len(deviceKeys)-1).Draw(t, "device")]
	hlc := events.HLC{WallMillis: rapid.Uint64Range(1, 6).Draw(t, "wall"), Logical: rapid.Uint32Range(0, 1).Draw(t, "logical")}
	coll := rapid.SampledFrom([]string{"tasks", "notes"}).Draw(t, "collection")
	id := rapid.SampledFrom([]string{"a", "b", "c"}).Draw(t, "doc")
	if rapid.IntRange(0, 4).Draw(t, "op") == 0 {
		return sign(t, device, hlc, coll, id, nil)
	}
	names := rapid.SliceOfNDistinct(rapid.SampledFrom([]string{"title", "status", "priority"}), 1, 3, rapid.ID[string]).Draw(t, "fields")
	fields := map[string]any{}
	for _, n := range names {
		fields[n] = rapid.IntRange(0, 100).Draw(t, "value")
	}
	return sign(t, device, hlc, coll, id, fields)
}

// expected folds facts by the definition, with no incremental state: per
// field the greatest put wins, and it is visible only after the greatest
// delete.
func expected(facts []*events.Fact) map[string]fold.Document {
	type key struct{ coll, id string }
	deletes := map[key]events.Version{}
	latest := map[key]events.Version{}
	winners := map[key]map[string]events.Version{}
	values := map[key]map[string]json.RawMessage{}
	for _, f := range facts {
		k, v := key{f.Collection(), f.Document()}, events.VersionOf(f)
		if v.Compare(latest[k]) > 0 {
			latest[k] = v
		}
		if winners[k] == nil {
			winners[k], values[k] = map[string]events.Version{}, map[string]json.RawMessage{}
		}
		if f.IsDelete() {
			if v.Compare(deletes[k]) > 0 {
				deletes[k] = v
			}
			continue
		}
		for name, value := range f.Fields() {
			if v.Compare(winners[k][name]) > 0 {
				winners[k][name], values[k][name] = v, value
			}
		}
	}
	out := map[string]fold.Document{}
	for k := range latest {
		d := fold.Document{Collection: k.coll, ID: k.id, Fields: map[string]json.RawMessage{}, Version: latest[k]}
		for name, v := range winners[k] {
			if v.Compare(deletes[k]) > 0 {
				d.Fields[name] = values[k][name]
			}
		}
		d.Deleted = !deletes[k].IsZero() && len(d.Fields) == 0
		out[k.coll+"/"+k.id] = d
	}
	return out
}

func documents(s *fold.State) map[string]fold.Document {
	out := map[string]fold.Document{}
	for _, coll := range s.Collections() {
		for d := range s.Documents(coll) {
			out[coll+"/"+d.ID] = d
		}
	}
	return out
}

func visible(d fold.Document) fold.Document { d.Version = events.Version{}; return d }

func TestFoldMatchesDefinition(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		facts := rapid.SliceOfN(rapid.Custom(genFact), 0, 30).Draw(t, "facts")
		s := fold.New()
		for _, f := range facts {
			ch, changed := s.Apply(f)
			if want := !reflect.DeepEqual(visible(ch.Before), visible(ch.After)); changed != want {
				t.Fatalf("Apply reported changed=%v, but before %+v after %+v", changed, ch.Before, ch.After)
			}
			if got, _ := s.Get(f.Collection(), f.Document()); !reflect.DeepEqual(got, ch.After) {
				t.Fatalf("Change.After %+v differs from Get %+v", ch.After, got)
			}
		}
		if got, want := documents(s), expected(facts); !reflect.DeepEqual(got, want) {
			t.Fatalf("fold differs from the definition:\n got %v\nwant %v", got, want)
		}
	})
}

func TestFoldIgnoresOrderDuplicationAndBatching(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		facts := rapid.SliceOfN(rapid.Custom(genFact), 1, 30).Draw(t, "facts")
		reference := fold.New()
		for _, f := range facts {
			reference.Apply(f)
		}

		// Another replica receives a permutation with duplicates, in
		// batches, and restores from its own checkpoint between batches.
		delivery := rapid.Permutation(facts).Draw(t, "order")
		for _, i := range rapid.SliceOfN(rapid.IntRange(0, len(facts)-1), 0, 10).Draw(t, "duplicates") {
			delivery = append(delivery, facts[i])
		}
		delivery = rapid.Permutation(delivery).Draw(t, "delivery")
		replica := fold.New()
		for len(delivery) > 0 {
			n := rapid.IntRange(1, len(delivery)).Draw(t, "batch")
			for _, f := range delivery[:n] {
				replica.Apply(f)
			}
			delivery = delivery[n:]
			replica = roundTrip(t, replica)
		}

		if reference.Digest() != replica.Digest() {
			t.Fatalf("digests differ after reordering")
		}
		if got, want := documents(replica), documents(reference); !reflect.DeepEqual(got, want) {
			t.Fatalf("documents differ:\n got %v\nwant %v", got, want)
		}
	})
}

func roundTrip(t tb, s *fold.State) *fold.State {
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	restored := fold.New()
	if err := restored.UnmarshalBinary(b); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	if again, _ := restored.MarshalBinary(); !bytes.Equal(again, b) {
		t.Fatalf("encoding is not stable across a round trip")
	}
	return restored
}

func TestDigestDistinguishesStates(t *testing.T) {
	a, b := fold.New(), fold.New()
	empty := a.Digest()
	a.Apply(sign(t, deviceKeys[0], events.HLC{WallMillis: 1}, "tasks", "a", map[string]any{"x": 1}))
	b.Apply(sign(t, deviceKeys[0], events.HLC{WallMillis: 1}, "tasks", "a", map[string]any{"x": 2}))
	if a.Digest() == b.Digest() || a.Digest() == empty {
		t.Fatal("different states have the same digest")
	}
}

func TestConcurrentEditsToDifferentFieldsBothSurvive(t *testing.T) {
	hlc := events.HLC{WallMillis: 1000}
	alice := sign(t, deviceKeys[0], hlc, "tasks", "t1", map[string]any{"title": "buy milk"})
	bob := sign(t, deviceKeys[1], hlc, "tasks", "t1", map[string]any{"status": "done"})
	for _, order := range [][]*events.Fact{{alice, bob}, {bob, alice}} {
		s := fold.New()
		for _, f := range order {
			s.Apply(f)
		}
		d, _ := s.Get("tasks", "t1")
		if string(d.Fields["title"]) != `"buy milk"` || string(d.Fields["status"]) != `"done"` {
			t.Fatalf("fields %v: an edit was lost", d.Fields)
		}
	}
}

func TestFieldEditedTwiceConvergesToOneWinner(t *testing.T) {
	// Same HLC on both devices: the FactID breaks the tie identically on
	// every replica.
	hlc := events.HLC{WallMillis: 1000, Logical: 3}
	alice := sign(t, deviceKeys[0], hlc, "tasks", "t1", map[string]any{"title": "alice"})
	bob := sign(t, deviceKeys[1], hlc, "tasks", "t1", map[string]any{"title": "bob"})
	want := `"alice"`
	if bob.ID.Compare(alice.ID) > 0 {
		want = `"bob"`
	}
	for _, order := range [][]*events.Fact{{alice, bob}, {bob, alice}} {
		s := fold.New()
		for _, f := range order {
			s.Apply(f)
		}
		if d, _ := s.Get("tasks", "t1"); string(d.Fields["title"]) != want {
			t.Fatalf("title = %s, want %s", d.Fields["title"], want)
		}
	}
}

func TestDeleteHidesEarlierFieldsAndLaterPutRevivesOnlyItsOwn(t *testing.T) {
	s := fold.New()
	s.Apply(sign(t, deviceKeys[0], events.HLC{WallMillis: 1}, "tasks", "t1", map[string]any{"title": "x", "status": "open"}))
	if _, changed := s.Apply(sign(t, deviceKeys[0], events.HLC{WallMillis: 2}, "tasks", "t1", nil)); !changed {
		t.Fatal("delete did not change the document")
	}
	if d, _ := s.Get("tasks", "t1"); !d.Deleted || len(d.Fields) != 0 {
		t.Fatalf("after delete: %+v", d)
	}
	// A put from before the delete, arriving late, stays hidden.
	if _, changed := s.Apply(sign(t, deviceKeys[1], events.HLC{WallMillis: 1, Logical: 5}, "tasks", "t1", map[string]any{"owner": "bob"})); changed {
		t.Fatal("a put older than the delete changed the document")
	}
	s.Apply(sign(t, deviceKeys[0], events.HLC{WallMillis: 3}, "tasks", "t1", map[string]any{"status": "reopened"}))
	d, _ := s.Get("tasks", "t1")
	if d.Deleted || len(d.Fields) != 1 || string(d.Fields["status"]) != `"reopened"` {
		t.Fatalf("after revival: %+v", d)
	}
}

func TestUnmarshalRejectsCorruption(t *testing.T) {
	s := fold.New()
	s.Apply(sign(t, deviceKeys[0], events.HLC{WallMillis: 1}, "tasks", "t1", map[string]any{"title": "x"}))
	good, _ := s.MarshalBinary()
	cases := map[string][]byte{
		"empty":     nil,
		"truncated": good[:len(good)-3],
		"trailing":  append(bytes.Clone(good), 0),
		"bad magic": append([]byte("xx"), good[2:]...),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			err := fold.New().UnmarshalBinary(b)
			if !events.IsReason(err, events.ReasonMalformed) {
				t.Fatalf("err = %v, want malformed", err)
			}
		})
	}
}

func FuzzUnmarshalBinary(f *testing.F) {
	s := fold.New()
	s.Apply(sign(f, deviceKeys[0], events.HLC{WallMillis: 1}, "tasks", "t1", map[string]any{"title": "x"}))
	s.Apply(sign(f, deviceKeys[0], events.HLC{WallMillis: 2}, "tasks", "t2", nil))
	good, _ := s.MarshalBinary()
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		st := fold.New()
		if st.UnmarshalBinary(b) != nil {
			return
		}
		// Whatever decodes must be canonical.
		if again, _ := st.MarshalBinary(); !bytes.Equal(again, b) {
			t.Fatalf("accepted a non-canonical encoding")
		}
	})
}

func BenchmarkApply(b *testing.B) {
	facts := make([]*events.Fact, 1000)
	for i := range facts {
		facts[i] = sign(b, deviceKeys[i%2], events.HLC{WallMillis: uint64(i + 1)}, "tasks", fmt.Sprintf("d%d", i%100), map[string]any{"n": i})
	}
	s := fold.New()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		s.Apply(facts[i%len(facts)])
	}
}

// TestNeededFactsRebuildTheState: folding only the Needed facts of a set
// gives the set's State, and so does folding them with any further facts
// (what a pruned journal holds: the kept facts and those after the cut).
func TestNeededFactsRebuildTheState(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		before := rapid.SliceOfN(rapid.Custom(genFact), 0, 30).Draw(t, "before")
		after := rapid.SliceOfN(rapid.Custom(genFact), 0, 10).Draw(t, "after")
		all, cut := fold.New(), fold.New()
		for _, f := range before {
			all.Apply(f)
			cut.Apply(f)
		}
		for _, f := range after {
			all.Apply(f)
		}
		kept, pruned := fold.New(), fold.New()
		n := 0
		for _, f := range before {
			if cut.Needed(f) {
				n++
				kept.Apply(f)
				pruned.Apply(f)
			}
		}
		for _, f := range after {
			pruned.Apply(f)
		}
		if kept.Digest() != cut.Digest() {
			t.Fatalf("the %d needed facts of %d fold to another state", n, len(before))
		}
		if pruned.Digest() != all.Digest() {
			t.Fatalf("the needed facts and the %d after them fold to another state than every fact", len(after))
		}
	})
}

// TestSupersededFactsAreNotNeeded: a put overwritten in every field and a
// delete followed by a greater one are not needed; the winners are.
func TestSupersededFactsAreNotNeeded(t *testing.T) {
	old := sign(t, deviceKeys[0], events.HLC{WallMillis: 1}, "tasks", "a", map[string]any{"title": 1})
	newer := sign(t, deviceKeys[0], events.HLC{WallMillis: 2}, "tasks", "a", map[string]any{"title": 2})
	del1 := sign(t, deviceKeys[0], events.HLC{WallMillis: 3}, "tasks", "b", nil)
	del2 := sign(t, deviceKeys[0], events.HLC{WallMillis: 4}, "tasks", "b", nil)
	s := fold.New()
	for _, f := range []*events.Fact{old, newer, del1, del2} {
		s.Apply(f)
	}
	for f, want := range map[*events.Fact]bool{old: false, newer: true, del1: false, del2: true} {
		if got := s.Needed(f); got != want {
			t.Errorf("Needed(%s) = %v, want %v", f.ID, got, want)
		}
	}
	if other := sign(t, deviceKeys[0], events.HLC{WallMillis: 5}, "notes", "z", nil); s.Needed(other) {
		t.Errorf("a fact of a document the state does not hold is needed")
	}
}

// TestSupersedesIsFoldingChangingNothingAndNotNeeded: Supersedes(f) holds
// exactly when folding f changes no part of the state (the digest covers
// every version) and f is not Needed afterwards, for facts already in the
// state and new ones alike.
func TestSupersedesIsFoldingChangingNothingAndNotNeeded(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		facts := rapid.SliceOfN(rapid.Custom(genFact), 0, 30).Draw(t, "facts")
		s := fold.New()
		for _, f := range facts {
			s.Apply(f)
		}
		var f *events.Fact
		if len(facts) > 0 && rapid.Bool().Draw(t, "known") {
			f = facts[rapid.IntRange(0, len(facts)-1).Draw(t, "which")]
		} else {
			f = genFact(t)
		}
		with := roundTrip(t, s)
		with.Apply(f)
		want := with.Digest() == s.Digest() && !with.Needed(f)
		if got := s.Supersedes(f); got != want {
			t.Fatalf("Supersedes(%s) = %v; folding it changes nothing and it is not needed: %v", f.ID, got, want)
		}
	})
}
