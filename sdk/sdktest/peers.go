package sdktest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

// Peers are clients of one authority on linked peers, for the peer tests.
type Peers struct {
	// Clients has one initialized client per peer, each holding the
	// `sync` right and knowing its peer (Info().Peer), with discovery
	// and sync not started. The peers do not sync on their own while
	// the test runs: a fact written through one client stays on its
	// peer until a SyncEngine moves it.
	Clients []sdk.DataSyncBackend
	// Cut partitions peer i from the others; Heal undoes it.
	Cut, Heal func(i int)
}

// testPeers: discovery finds the other peer (and not the client's own)
// with discovered and connected events; ForceSync moves a fact each way
// and reports what moved, and nothing when nothing differs; a started
// engine carries a write by itself; a cut peer disconnects and refuses a
// sync until it heals; AddPeer adds a reachable peer and refuses bad ids.
func testPeers(t *testing.T, s Setup) {
	ctx := ctxFor(t, s)
	if s.NewPeerClients == nil {
		a := s.NewClients(t, 1, nil)[0]
		_, err := a.SyncEngine().ForceSync(ctx, events.PeerID(strings.Repeat("a", events.IDLen)))
		if !events.IsReason(err, events.ReasonUnsupported) && !events.IsReason(err, events.ReasonUnavailable) {
			t.Fatalf("force sync on a backend that links no peers: %v, want unsupported or unavailable", err)
		}
		return
	}
	p := s.NewPeerClients(t, 2)
	a, b := p.Clients[0], p.Clients[1]
	peerA, peerB := a.Info().Peer, b.Info().Peer
	if peerA.Validate() != nil || peerB.Validate() != nil || peerA == peerB {
		t.Fatalf("peer clients on peers %q and %q, want two distinct peer ids", peerA, peerB)
	}

	// Discovery.
	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	peerEvents := a.PeerDiscovery().Events(evCtx)
	for _, c := range p.Clients {
		if err := c.PeerDiscovery().Start(ctx); err != nil {
			t.Fatalf("start discovery: %v", err)
		}
	}
	info, err := a.PeerDiscovery().WaitForPeer(ctx, peerB)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != peerB || !info.Connected {
		t.Fatalf("peer info %+v, want %s connected", info, peerB)
	}
	expectPeerEvent(t, s, peerEvents, peerB, sdk.PeerDiscovered)
	expectPeerEvent(t, s, peerEvents, peerB, sdk.PeerConnected)
	found := a.PeerDiscovery().DiscoveredPeers()
	if !slices.ContainsFunc(found, func(p sdk.PeerInfo) bool { return p.ID == peerB }) ||
		slices.ContainsFunc(found, func(p sdk.PeerInfo) bool { return p.ID == peerA }) {
		t.Fatalf("discovered peers %v, want %s and not the client's own %s", found, peerB, peerA)
	}

	// ForceSync moves what differs, both ways, and reports it.
	mustUpsert(t, s, a, "from-a", map[string]any{"side": "a"})
	res := forceSync(t, s, a, peerB)
	if res.Sent != 1 || res.Received != 0 || res.Rounds < 1 || res.BytesSent <= 0 {
		t.Fatalf("sync after one write on A: %+v, want 1 fact sent, none received, rounds and the bytes sent", res)
	}
	waitForDoc(t, s, b, "from-a")
	if res := forceSync(t, s, a, peerB); res.Sent != 0 || res.Received != 0 {
		t.Fatalf("sync with nothing to move: %+v, want no fact either way", res)
	}
	mustUpsert(t, s, b, "from-b", map[string]any{"side": "b"})
	if res := forceSync(t, s, a, peerB); res.Sent != 0 || res.Received != 1 || res.Rounds < 1 || res.BytesReceived <= 0 {
		t.Fatalf("sync after one write on B: %+v, want 1 fact received, none sent, rounds and the bytes received", res)
	}
	waitForDoc(t, s, a, "from-b")

	// A started engine carries writes by itself.
	engine := a.SyncEngine()
	if engine.IsSyncing() {
		t.Fatal("an engine that was never started reports syncing")
	}
	if err := engine.Start(ctx); err != nil {
		t.Fatalf("start sync: %v", err)
	}
	if !engine.IsSyncing() {
		t.Fatal("a started engine does not report syncing")
	}
	mustUpsert(t, s, a, "carried", map[string]any{"side": "a"})
	waitForDoc(t, s, b, "carried")
	if err := engine.Stop(); err != nil || engine.IsSyncing() {
		t.Fatalf("stop sync: %v; syncing %v", err, engine.IsSyncing())
	}

	// A cut peer disconnects and cannot be synced until it heals.
	p.Cut(1)
	expectPeerEvent(t, s, peerEvents, peerB, sdk.PeerDisconnected)
	if _, err := syncUnlessBusy(t, s, a, peerB); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("sync with a cut-off peer: %v, want unavailable", err)
	}
	p.Heal(1)
	expectPeerEvent(t, s, peerEvents, peerB, sdk.PeerConnected)
	eventually(t, s, "a sync after the heal", func() (bool, string) {
		_, err := a.SyncEngine().ForceSync(ctx, peerB)
		return err == nil, fmt.Sprint(err)
	})

	if _, err := a.SyncEngine().ForceSync(ctx, "not-a-peer"); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("sync with a malformed peer id: %v, want malformed", err)
	}
	if err := a.SyncEngine().SubscribeCollections(ctx, "bad.name"); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("subscribing to a bad collection name: %v, want malformed", err)
	}

	// AddPeer adds a reachable peer by its id and refuses, with a reason,
	// a malformed id, the client's own peer and an id no peer answers
	// for. It comes last: on a server it starts a session of its own.
	for _, c := range []struct {
		address string
		want    events.Reason
	}{
		{"not-a-peer", events.ReasonMalformed},
		{string(peerA), events.ReasonMalformed},
		{strings.Repeat("a", events.IDLen), events.ReasonNotFound},
	} {
		if _, err := a.PeerDiscovery().AddPeer(ctx, c.address); !events.IsReason(err, c.want) {
			t.Fatalf("add peer %q: %v, want %s", c.address, err, c.want)
		}
	}
	added, err := a.PeerDiscovery().AddPeer(ctx, string(peerB))
	if err != nil || added.ID != peerB || !added.Connected {
		t.Fatalf("add peer %s: %+v, %v; want it, connected", peerB, added, err)
	}
}

// forceSync syncs c with peer, again while the backend says it is busy
// (rate_limited: the session did not run).
func forceSync(t *testing.T, s Setup, c sdk.DataSyncBackend, peer events.PeerID) sdk.SyncResult {
	t.Helper()
	res, err := syncUnlessBusy(t, s, c, peer)
	if err != nil {
		t.Fatalf("sync with %s: %v", peer, err)
	}
	if res.Peer != peer {
		t.Fatalf("sync with %s reports peer %s", peer, res.Peer)
	}
	return res
}

// syncUnlessBusy runs ForceSync until it is not refused rate_limited.
func syncUnlessBusy(t *testing.T, s Setup, c sdk.DataSyncBackend, peer events.PeerID) (sdk.SyncResult, error) {
	t.Helper()
	var res sdk.SyncResult
	var err error
	eventually(t, s, "a sync with "+string(peer)+" the backend does not turn away as busy", func() (bool, string) {
		res, err = c.SyncEngine().ForceSync(ctxFor(t, s), peer)
		return !events.IsReason(err, events.ReasonRateLimited), fmt.Sprint(err)
	})
	return res, err
}

// waitForDoc waits until c's store holds document id.
func waitForDoc(t *testing.T, s Setup, c sdk.DataSyncBackend, id string) {
	t.Helper()
	eventually(t, s, "document "+id+" on "+string(c.Info().Peer), func() (bool, string) {
		_, err := c.DocumentStore().Get(ctxFor(t, s), coll, id)
		return err == nil, fmt.Sprint(err)
	})
}

// expectPeerEvent reads peer events until one of kind about peer. Events
// about other peers are skipped; another kind about peer fails, except
// that on the way back to connected a peer may have been lost and
// discovered again.
func expectPeerEvent(t *testing.T, s Setup, ch <-chan sdk.PeerEvent, peer events.PeerID, kind sdk.PeerEventKind) {
	t.Helper()
	deadline := time.After(s.Timeout)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("peer events ended while waiting for %s of %s", kind, peer)
			}
			switch {
			case ev.Peer.ID != peer:
			case ev.Kind == kind:
				return
			case kind == sdk.PeerConnected && (ev.Kind == sdk.PeerLost || ev.Kind == sdk.PeerDiscovered):
			default:
				t.Fatalf("peer event %s of %s while waiting for %s", ev.Kind, peer, kind)
			}
		case <-deadline:
			t.Fatalf("no %s event of %s within %s", kind, peer, s.Timeout)
		}
	}
}
