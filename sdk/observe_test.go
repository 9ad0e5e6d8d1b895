package sdk_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

// fakeSource is a tiny store: documents by id with a change sequence, and
// the matching rule "field n is at least 2 and the document is not deleted".
type fakeSource struct {
	mu   sync.Mutex
	seq  uint64
	docs map[string]sdk.Document
	obs  sdk.Observers
}

func matchN(d sdk.Document) bool {
	var n int
	return !d.Deleted && json.Unmarshal(d.Fields["n"], &n) == nil && n >= 2
}

func (s *fakeSource) snapshot(context.Context) ([]sdk.Document, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []sdk.Document
	for _, d := range s.docs {
		if matchN(d) {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b sdk.Document) int { return compareStrings(a.ID, b.ID) })
	return out, s.seq, nil
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *fakeSource) set(id string, n int, deleted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	d := sdk.Document{Collection: "c", ID: id, Deleted: deleted, Fields: map[string]json.RawMessage{}}
	if !deleted {
		d.Fields["n"], _ = json.Marshal(n)
	}
	d.Version = events.Version{HLC: events.HLC{WallMillis: s.seq}}
	s.docs[id] = d
	s.obs.Notify(d, s.seq)
}

func (s *fakeSource) observe(ctx context.Context, buffer int) *sdk.Observation {
	return s.obs.Start(ctx, "c", sdk.ObservationSource{Match: matchN, Snapshot: s.snapshot, Buffer: buffer})
}

func next(t *testing.T, o *sdk.Observation) sdk.Event {
	t.Helper()
	select {
	case ev, ok := <-o.Events():
		if !ok {
			t.Fatalf("observation ended: %v", o.Err())
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no observation event within 10s")
	}
	panic("unreachable")
}

func ids(docs []sdk.Document) []string {
	var out []string
	for _, d := range docs {
		out = append(out, d.ID)
	}
	return out
}

func TestObservationDeliversInitialUpdatedAndBothKindsOfRemoved(t *testing.T) {
	src := &fakeSource{docs: map[string]sdk.Document{}}
	src.set("a", 5, false)
	src.set("b", 1, false)
	o := src.observe(t.Context(), 16)

	if ev := next(t, o); ev.Kind != sdk.Initial || ev.Resync || !slices.Equal(ids(ev.Documents), []string{"a"}) {
		t.Fatalf("first event %v %v, want Initial [a]", ev.Kind, ids(ev.Documents))
	}
	src.set("b", 1, false) // still not matching: nothing
	src.set("b", 3, false) // starts matching
	src.set("a", 0, false) // stops matching
	src.set("b", 0, true)  // deleted
	want := []struct {
		kind  sdk.EventKind
		id    string
		cause sdk.RemoveCause
	}{
		{sdk.Updated, "b", 0},
		{sdk.Removed, "a", sdk.CauseStoppedMatching},
		{sdk.Removed, "b", sdk.CauseDeleted},
	}
	for _, w := range want {
		ev := next(t, o)
		if ev.Kind != w.kind || ev.Document.ID != w.id || ev.Cause != w.cause {
			t.Fatalf("got %v %s %v, want %v %s %v", ev.Kind, ev.Document.ID, ev.Cause, w.kind, w.id, w.cause)
		}
	}
	o.Close()
	for range o.Events() {
	}
	if o.Err() == nil {
		t.Fatal("a closed observation must say why it ended")
	}
}

func TestSlowObserverNeverBlocksAndGetsAResyncInitial(t *testing.T) {
	src := &fakeSource{docs: map[string]sdk.Document{}}
	o := src.observe(t.Context(), 2)
	if ev := next(t, o); ev.Kind != sdk.Initial || len(ev.Documents) != 0 {
		t.Fatalf("first event %v with %d docs, want an empty Initial", ev.Kind, len(ev.Documents))
	}

	// Nobody reads while 50 writes happen; each set would deadlock here if
	// Notify blocked on the observer.
	for i := range 50 {
		src.set("d"+string(rune('a'+i%5)), 2+i, false)
	}
	wantLast, _, _ := src.snapshot(context.Background())

	// The resync may be cut while the writes are still going on; what
	// counts is that the resync Initial plus the events after it rebuild
	// exactly the current matching set.
	view := map[string]sdk.Document{}
	resynced := false
	deadline := time.After(10 * time.Second)
	for !resynced || !sameDocuments(view, wantLast) {
		var ev sdk.Event
		select {
		case ev = <-o.Events():
		case <-deadline:
			t.Fatalf("no resync Initial leading to the current matching set %v within 10s (resynced %v, view %v)", ids(wantLast), resynced, view)
		}
		switch ev.Kind {
		case sdk.Initial:
			if !ev.Resync {
				t.Fatal("a second Initial must be marked as a resync")
			}
			resynced = true
			clear(view)
			for _, d := range ev.Documents {
				view[d.ID] = d
			}
		case sdk.Updated:
			view[ev.Document.ID] = ev.Document
		case sdk.Removed:
			delete(view, ev.Document.ID)
		}
	}
}

// sameDocuments reports whether view holds exactly docs, id and version.
func sameDocuments(view map[string]sdk.Document, docs []sdk.Document) bool {
	if len(view) != len(docs) {
		return false
	}
	for _, d := range docs {
		if v, ok := view[d.ID]; !ok || v.Version != d.Version {
			return false
		}
	}
	return true
}
