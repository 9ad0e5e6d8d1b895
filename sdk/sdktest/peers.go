package sdktest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

func testPeers(t *testing.T, s Setup) {
	clients := s.NewClients(t, 2, nil)
	a, b := clients[0], clients[1]
	ctx := ctxFor(t, s)
	if !s.PeerSync {
		_, err := a.SyncEngine().ForceSync(ctx, b.Info().Peer)
		if !events.IsReason(err, events.ReasonUnsupported) && !events.IsReason(err, events.ReasonUnavailable) {
			t.Fatalf("force sync on a backend without client-driven sync: %v, want unsupported or unavailable", err)
		}
		return
	}
	peerB := b.Info().Peer
	info, err := a.PeerDiscovery().WaitForPeer(ctx, peerB)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != peerB || !info.Connected {
		t.Fatalf("peer info %+v, want %s connected", info, peerB)
	}
	if !slices.ContainsFunc(a.PeerDiscovery().DiscoveredPeers(), func(p sdk.PeerInfo) bool { return p.ID == peerB }) {
		t.Fatalf("discovered peers %v lack %s", a.PeerDiscovery().DiscoveredPeers(), peerB)
	}
	if !a.SyncEngine().IsSyncing() {
		t.Fatal("the clients of a linked setup must be syncing")
	}
	res, err := a.SyncEngine().ForceSync(ctx, peerB)
	if err != nil {
		t.Fatal(err)
	}
	if res.Peer != peerB || res.Rounds == 0 {
		t.Fatalf("sync result %+v", res)
	}
	for i := range 3 {
		mustUpsert(t, s, a, fmt.Sprintf("p%d", i), map[string]any{"i": i})
	}
	eventually(t, s, "writes reach the peer", func() (bool, string) {
		n, err := b.DocumentStore().Count(ctx, coll, sdk.Query{})
		return err == nil && n == 3, fmt.Sprint(n, err)
	})
	if err := a.SyncEngine().SubscribeCollections(ctx, "bad.name"); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("subscribing to a bad collection name: %v, want malformed", err)
	}
}
