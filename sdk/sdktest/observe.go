package sdktest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

func testObserve(t *testing.T, s Setup) {
	clients := s.NewClients(t, 2, nil)
	local, remote := clients[0], clients[1]
	ctx := ctxFor(t, s)
	mustUpsert(t, s, local, "o1", map[string]any{"status": "open"})
	mustUpsert(t, s, local, "o2", map[string]any{"status": "done"})
	waitVisible(t, s, remote, "o2")

	obs, err := local.DocumentStore().Observe(ctx, coll, sdk.Query{Where: `status == "open"`})
	if err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, s, obs)
	if ev.Kind != sdk.Initial || ev.Resync || !slices.Equal(ids(ev.Documents), []string{"o1"}) {
		t.Fatalf("first event %v %v, want Initial [o1]", ev.Kind, ids(ev.Documents))
	}

	steps := []struct {
		write func()
		kind  sdk.EventKind
		id    string
		cause sdk.RemoveCause
	}{
		{func() { mustUpsert(t, s, remote, "o2", map[string]any{"status": "open"}) }, sdk.Updated, "o2", 0},
		{func() { mustUpsert(t, s, local, "o1", map[string]any{"note": "hi"}) }, sdk.Updated, "o1", 0},
		{func() { mustUpsert(t, s, remote, "o1", map[string]any{"status": "done"}) }, sdk.Removed, "o1", sdk.CauseStoppedMatching},
		{func() {
			if _, err := remote.DocumentStore().Delete(ctx, coll, "o2", "cleanup"); err != nil {
				t.Fatal(err)
			}
		}, sdk.Removed, "o2", sdk.CauseDeleted},
	}
	for i, st := range steps {
		st.write()
		ev := nextEvent(t, s, obs)
		if ev.Kind != st.kind || ev.Document.ID != st.id || ev.Cause != st.cause {
			t.Fatalf("step %d: got %v %s %v, want %v %s %v", i, ev.Kind, ev.Document.ID, ev.Cause, st.kind, st.id, st.cause)
		}
	}
	// A write to a document that never matches produces nothing; the next
	// event is the one after it.
	mustUpsert(t, s, local, "o3", map[string]any{"status": "done"})
	mustUpsert(t, s, local, "o4", map[string]any{"status": "open"})
	if ev := nextEvent(t, s, obs); ev.Kind != sdk.Updated || ev.Document.ID != "o4" {
		t.Fatalf("got %v %s, want Updated o4 (o3 never matched)", ev.Kind, ev.Document.ID)
	}
}

// waitVisible waits until c can read document id.
func waitVisible(t *testing.T, s Setup, c sdk.DataSyncBackend, id string) {
	t.Helper()
	eventually(t, s, "document "+id+" visible on the other client", func() (bool, string) {
		_, err := c.DocumentStore().Get(ctxFor(t, s), coll, id)
		return err == nil, fmt.Sprint(err)
	})
}

func testObserveResync(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, func(cfg *sdk.Config) { cfg.ObserveBuffer = 2 })[0]
	ctx := ctxFor(t, s)
	obs, err := c.DocumentStore().Observe(ctx, coll, sdk.Query{})
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, s, obs); ev.Kind != sdk.Initial {
		t.Fatalf("first event %v, want Initial", ev.Kind)
	}
	// Nobody reads while the writes happen; they must not wait for the
	// observer.
	var want []string
	for i := range 12 {
		id := fmt.Sprintf("r%02d", i)
		mustUpsert(t, s, c, id, map[string]any{"i": i})
		want = append(want, id)
	}
	for {
		ev := nextEvent(t, s, obs)
		if ev.Kind != sdk.Initial {
			continue
		}
		if !ev.Resync {
			t.Fatal("an Initial after the first must be marked as a resync")
		}
		got := ids(ev.Documents)
		if slices.Equal(got, want) {
			return
		}
		// The resync may predate the last writes; later changes follow as
		// updates, so keep reading until the set is complete.
		for !slices.Equal(got, want) {
			ev := nextEvent(t, s, obs)
			switch ev.Kind {
			case sdk.Initial:
				got = ids(ev.Documents)
			case sdk.Updated:
				if !slices.Contains(got, ev.Document.ID) {
					got = append(got, ev.Document.ID)
					slices.Sort(got)
				}
			default:
				t.Fatalf("unexpected %v of %s", ev.Kind, ev.Document.ID)
			}
		}
		return
	}
}

func testConcurrentFields(t *testing.T, s Setup) {
	clients := s.NewClients(t, 2, nil)
	a, b := clients[0], clients[1]
	mustUpsert(t, s, a, "shared", map[string]any{"title": "draft"})
	waitVisible(t, s, b, "shared")

	errs := make(chan error, 2)
	go func() {
		_, err := a.DocumentStore().Upsert(ctxFor(t, s), coll, "shared", map[string]any{"title": "final"})
		errs <- err
	}()
	go func() {
		_, err := b.DocumentStore().Upsert(ctxFor(t, s), coll, "shared", map[string]any{"owner": "bob"})
		errs <- err
	}()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range clients {
		eventually(t, s, fmt.Sprintf("client %d sees both edits", i), func() (bool, string) {
			d, err := c.DocumentStore().Get(ctxFor(t, s), coll, "shared")
			if err != nil {
				return false, err.Error()
			}
			return field(t, d, "title") == "final" && field(t, d, "owner") == "bob", fmtFields(d)
		})
	}
}

func testSameFieldWinner(t *testing.T, s Setup) {
	clients := s.NewClients(t, 2, nil)
	a, b := clients[0], clients[1]
	type write struct {
		value string
		res   sdk.WriteResult
		err   error
	}
	done := make(chan write, 2)
	for i, c := range clients {
		value := fmt.Sprintf("from-%d", i)
		go func() {
			res, err := c.DocumentStore().Upsert(ctxFor(t, s), coll, "contested", map[string]any{"color": value})
			done <- write{value, res, err}
		}()
	}
	w1, w2 := <-done, <-done
	if w1.err != nil || w2.err != nil {
		t.Fatal(w1.err, w2.err)
	}
	// The greatest (HLC, FactID) wins on every replica.
	winner := w1
	if (events.Version{HLC: w2.res.HLC, Fact: w2.res.Fact}).Compare(events.Version{HLC: w1.res.HLC, Fact: w1.res.Fact}) > 0 {
		winner = w2
	}
	for i, c := range []sdk.DataSyncBackend{a, b} {
		eventually(t, s, fmt.Sprintf("client %d converges on %s", i, winner.value), func() (bool, string) {
			d, err := c.DocumentStore().Get(ctxFor(t, s), coll, "contested")
			if err != nil {
				return false, err.Error()
			}
			return field(t, d, "color") == winner.value, fmtFields(d)
		})
	}
}
