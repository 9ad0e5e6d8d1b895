package mesh

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

// localSamples is one subject of every local family.
var localSamples = []string{
	"fs.in.fact.auth", "fs.journal.auth.notes", "fs.token.auth.hash", "fs.denied.bad_signature",
	"fs.changes.auth.notes.doc", "fs.api.journal.get.auth", "fs.svc.antientropy.open.auth",
	"fs.receipts.x", "fs.ota.x", "fs.snapshot.x",
	"$JS.API.STREAM.NAMES", "$JS.peer-1.API.STREAM.NAMES", "$KV.bucket.key", "$O.store.x", "$SYS.REQ.SERVER.PING",
}

// walls picks which of the two walls a test mesh has.
type walls struct{ hub, denyLists bool }

// testPeers are the ids of the test meshes' peers.
var testPeers = []events.PeerID{events.PeerID(strings.Repeat("a", events.IDLen)), events.PeerID(strings.Repeat("b", events.IDLen))}

// twoPeers starts a hub and two linked peers with the given walls and
// returns a connection to each peer, on the peer's private inbox.
func twoPeers(t *testing.T, w walls) (*Hub, [2]*nats.Conn) {
	t.Helper()
	hub, err := StartHub(HubConfig{Peers: testPeers, allowAll: !w.hub})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	var conns [2]*nats.Conn
	for i := range 2 {
		link, err := hub.link(i, w.denyLists)
		if err != nil {
			t.Fatal(err)
		}
		ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: t.TempDir(), Domain: PeerDomain(i), ServerName: PeerDomain(i), LazySync: true, Configure: link})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		conns[i] = bustest.Connect(t, ns.ClientURL(), nats.CustomInboxPrefix(hub.InboxPrefix(i)))
	}
	return hub, conns
}

// crossed publishes one subject of every local family on peer 0 and
// returns those that reached peer 1, as a subscriber or in a stream. A
// control on fs.peer.> sent after them bounds the wait: the mesh keeps a
// publisher's order, so once the control arrives everything before it
// that crossed has arrived too.
func crossed(t *testing.T, conns [2]*nats.Conn) []string {
	t.Helper()
	ctx := context.Background()
	js, err := jetstream.New(conns[1])
	if err != nil {
		t.Fatal(err)
	}
	var streamSubjects []string
	for _, s := range localSamples {
		if !strings.HasPrefix(s, "$") {
			streamSubjects = append(streamSubjects, s)
		}
	}
	capture, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CAPTURE", Subjects: streamSubjects, Storage: jetstream.MemoryStorage})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	for _, s := range localSamples {
		if _, err := conns[1].Subscribe(s, func(m *nats.Msg) {
			mu.Lock()
			got = append(got, m.Subject)
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	control := make(chan string, 16)
	if _, err := conns[1].Subscribe(events.PeerPrefix+"."+string(testPeers[1])+".>", func(m *nats.Msg) { control <- string(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := conns[1].Flush(); err != nil {
		t.Fatal(err)
	}
	// Wait until the link is up and interest has crossed.
	bustest.Eventually(t, 20*time.Second, func() bool {
		_ = conns[0].Publish(events.PeerSubject(testPeers[1], "test", "control"), []byte("ready"))
		select {
		case <-control:
			return true
		case <-time.After(20 * time.Millisecond):
			return false
		}
	}, "the control subject to cross the mesh")
	for _, s := range localSamples {
		if err := conns[0].Publish(s, []byte("must stay local")); err != nil {
			t.Fatal(err)
		}
	}
	if err := conns[0].Publish(events.PeerSubject(testPeers[1], "test", "control"), []byte("done")); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case c := <-control:
			done = c == "done"
		case <-deadline:
			t.Fatal("the final control did not cross the mesh in 10s")
		}
	}
	if err := conns[1].Flush(); err != nil {
		t.Fatal(err)
	}
	info, err := capture.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if info.State.Msgs > 0 {
		got = append(got, fmt.Sprintf("%d messages in peer 1's CAPTURE stream", info.State.Msgs))
	}
	return got
}

// Nothing of a peer's local subject families reaches another peer, with
// both walls, with only the hub's allow-list (a peer whose own deny lists
// are missing, or hostile), and with only the peers' deny lists (a hub
// misconfigured to allow everything). Without either wall the same
// messages do cross, so the test can see a leak.
func TestOnlyPeerPresenceAndInboxesCross(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, tc := range []struct {
		name  string
		walls walls
		leak  bool
	}{
		{"both walls", walls{hub: true, denyLists: true}, false},
		{"hub allow-list alone", walls{hub: true}, false},
		{"peer deny lists alone", walls{denyLists: true}, false},
		{"no wall (control)", walls{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, conns := twoPeers(t, tc.walls)
			got := crossed(t, conns)
			if tc.leak && len(got) == 0 {
				t.Fatal("without walls nothing crossed: the test cannot see a leak")
			}
			if !tc.leak && len(got) > 0 {
				t.Fatalf("local subjects crossed the mesh: %v", got)
			}
		})
	}
}

// Peer requests cross with their replies, presence crosses, and a cut
// link stops both until it heals.
func TestRequestsCrossAndLinksCut(t *testing.T) {
	hub, conns := twoPeers(t, walls{hub: true, denyLists: true})
	if _, err := conns[1].Subscribe(events.PeerSubject(testPeers[1], "echo", "ping"), func(m *nats.Msg) { _ = m.Respond(append([]byte("pong:"), m.Data...)) }); err != nil {
		t.Fatal(err)
	}
	presence := make(chan struct{}, 16)
	if _, err := conns[1].Subscribe("fs.presence.*", func(*nats.Msg) { presence <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if err := conns[1].Flush(); err != nil {
		t.Fatal(err)
	}
	ask := func() bool {
		r, err := conns[0].Request(events.PeerSubject(testPeers[1], "echo", "ping"), []byte("x"), 200*time.Millisecond)
		return err == nil && string(r.Data) == "pong:x"
	}
	bustest.Eventually(t, 20*time.Second, ask, "a request across the mesh to be answered")
	bustest.Eventually(t, 5*time.Second, func() bool {
		_ = conns[0].Publish(events.PresenceSubject(testPeers[0]), []byte("{}"))
		select {
		case <-presence:
			return true
		case <-time.After(20 * time.Millisecond):
			return false
		}
	}, "presence to cross the mesh")

	hub.Cut(1)
	bustest.Eventually(t, 10*time.Second, func() bool { return !ask() }, "the cut to stop requests")
	// The cut peer keeps knocking on its link, and never reaches the hub
	// another way (an advertised leafnode URL would let it).
	bustest.Eventually(t, 10*time.Second, func() bool {
		l := hub.links[1]
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.refused >= 3
	}, "the cut peer to try its link again")
	if n := hub.Server.NumLeafNodes(); n != 1 {
		t.Fatalf("the hub has %d leafnode connections while peer 1 is cut, want 1", n)
	}
	hub.Heal(1)
	bustest.Eventually(t, 20*time.Second, ask, "requests to cross again after the link heals")
}
