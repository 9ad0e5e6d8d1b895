package memory_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

// Three peers; C is cut off, all three write (including the same field of
// one document), and after the heal every peer holds the same facts and
// shows the same documents.
func TestPartitionedPeersConvergeAfterHeal(t *testing.T) {
	network, peers := newPeers(t, 3, nil)
	a, b, c := peers[0], peers[1], peers[2]
	ctx := t.Context()

	events0 := c.PeerDiscovery().Events(ctx)
	network.Cut(a.Peer(), c.Peer())
	network.Cut(b.Peer(), c.Peer())
	waitFor(t, "C sees A and B disconnect", func() bool {
		return countConnected(c) == 0
	})

	for i, p := range peers {
		if _, err := p.DocumentStore().Upsert(ctx, "notes", "n1", map[string]any{"color": fmt.Sprintf("c%d", i), fmt.Sprintf("by%d", i): true}); err != nil {
			t.Fatal(err)
		}
	}
	if digestsEqual(peers) {
		t.Fatal("a cut-off peer must not see the others' writes")
	}

	network.Heal(a.Peer(), c.Peer())
	network.Heal(b.Peer(), c.Peer())
	waitFor(t, "all peers hold the same facts and documents", func() bool { return digestsEqual(peers) && sameFacts(peers) })

	d, err := c.DocumentStore().Get(ctx, "notes", "n1")
	if err != nil {
		t.Fatal(err)
	}
	for i := range peers {
		if _, ok := d.Fields[fmt.Sprintf("by%d", i)]; !ok {
			t.Fatalf("field by%d was lost: %v", i, d.Fields)
		}
	}
	var kinds []sdk.PeerEventKind
	for len(events0) > 0 {
		kinds = append(kinds, (<-events0).Kind)
	}
	if !slices.Contains(kinds, sdk.PeerDisconnected) || !slices.Contains(kinds, sdk.PeerConnected) {
		t.Fatalf("C's peer events %v lack disconnected and connected", kinds)
	}
}

func TestSubscribedCollectionsLimitWhatSyncs(t *testing.T) {
	_, peers := newPeers(t, 2, nil)
	a, b := peers[0], peers[1]
	ctx := t.Context()
	if err := b.SyncEngine().SubscribeCollections(ctx, "wanted"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DocumentStore().Upsert(ctx, "ignored", "x", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DocumentStore().Upsert(ctx, "wanted", "y", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.SyncEngine().ForceSync(ctx, a.Peer()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DocumentStore().Get(ctx, "wanted", "y"); err != nil {
		t.Fatalf("subscribed collection did not sync: %v", err)
	}
	if _, err := b.DocumentStore().Get(ctx, "ignored", "x"); !events.IsReason(err, events.ReasonNotFound) {
		t.Fatalf("unsubscribed collection synced: %v", err)
	}
}

func countConnected(b interface{ PeerDiscovery() sdk.PeerDiscovery }) int {
	n := 0
	for _, p := range b.PeerDiscovery().DiscoveredPeers() {
		if p.Connected {
			n++
		}
	}
	return n
}

func digestsEqual[B interface{ Digest() [32]byte }](peers []B) bool {
	for _, p := range peers[1:] {
		if p.Digest() != peers[0].Digest() {
			return false
		}
	}
	return true
}

func sameFacts[B interface{ FactIDs() []events.FactID }](peers []B) bool {
	sorted := func(b B) []events.FactID {
		ids := b.FactIDs()
		slices.SortFunc(ids, events.FactID.Compare)
		return ids
	}
	want := sorted(peers[0])
	for _, p := range peers[1:] {
		if !slices.Equal(sorted(p), want) {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
