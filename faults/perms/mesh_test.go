package perms

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/faults/internal/stack"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/nats-io/nats.go"
)

// The mesh hub's rules (shared/mesh): each peer's leafnode user is scoped
// to its own peer, so a hostile peer cannot read the requests (with their
// bearer sync tokens) or the replies of the others. A hostile peer is
// tried both ways it could go: as a client of the hub with its leaf
// user's credentials (its server need not play by the leafnode rules),
// and through its own server's leafnode link.

// meshPeers are three peers of a hub: A (hostile), B and C.
type meshPeers struct {
	hub   *mesh.Hub
	ids   [3]events.PeerID
	local [3]*nats.Conn // a connection to each peer's own server, on its private inbox
}

func startMeshPeers(t *testing.T) *meshPeers {
	t.Helper()
	m := &meshPeers{}
	for i := range m.ids {
		m.ids[i] = events.PeerIDOf(stack.NewDevice(t).Pub) // any key makes a PeerID
	}
	hub, err := mesh.StartHub(mesh.HubConfig{Peers: m.ids[:]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	m.hub = hub
	for i := range m.ids {
		ns, err := hub.StartPeer(i, bus.EmbeddedConfig{StoreDir: t.TempDir(), LazySync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		m.local[i] = bustest.Connect(t, ns.ClientURL(), nats.CustomInboxPrefix(hub.InboxPrefix(i)))
	}
	return m
}

// hostile connects to the hub as peer i's leaf user.
func (m *meshPeers) hostile(t *testing.T, i int) *stack.Conn {
	t.Helper()
	return stack.ConnectTo(t, m.hub.Server.ClientURL(), m.hub.User(i))
}

// serveEcho answers echo requests addressed to peer i on its own server.
func (m *meshPeers) serveEcho(t *testing.T, i int) {
	t.Helper()
	if _, err := m.local[i].Subscribe(events.PeerSubject(m.ids[i], "test", "echo"), func(r *nats.Msg) {
		_ = r.Respond(append([]byte("echo:"), r.Data...))
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.local[i].Flush(); err != nil {
		t.Fatal(err)
	}
}

// ask sends an echo request from peer from to peer to across the mesh,
// retrying until the link is up and interest has crossed.
func (m *meshPeers) ask(t *testing.T, from, to int, body string) {
	t.Helper()
	bustest.Eventually(t, wait, func() bool {
		r, err := m.local[from].Request(events.PeerSubject(m.ids[to], "test", "echo"), []byte(body), 200*time.Millisecond)
		return err == nil && string(r.Data) == "echo:"+body
	}, "peer %d's request to peer %d to be answered", from, to)
}

// spy subscribes on peer i's own server to subjects and returns what
// arrives there. Call drained before sending what it must not see: the
// heartbeat it waits for is subscribed after the spy's subjects, so once
// it crosses, the spy's interest has reached the hub too (granted or
// refused).
func (m *meshPeers) spy(t *testing.T, i int, subjects ...string) func() []string {
	t.Helper()
	var mu sync.Mutex
	var got []string
	for _, s := range subjects {
		if _, err := m.local[i].Subscribe(s, func(msg *nats.Msg) {
			mu.Lock()
			got = append(got, fmt.Sprintf("%s %q", msg.Subject, msg.Data))
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.local[i].Flush(); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// drained waits until a presence heartbeat that peer from sends after
// everything else has reached peer to. The hub forwards one sender's
// messages in order, so whatever from sent before it that crossed to
// peer to has arrived by then.
func (m *meshPeers) drained(t *testing.T, from, to int) {
	t.Helper()
	heard := make(chan struct{}, 1)
	sub, err := m.local[to].Subscribe(events.PresenceSubject(m.ids[from]), func(*nats.Msg) {
		select {
		case heard <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := m.local[to].Flush(); err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, wait, func() bool {
		_ = m.local[from].Publish(events.PresenceSubject(m.ids[from]), []byte("{}"))
		select {
		case <-heard:
			return true
		case <-time.After(20 * time.Millisecond):
			return false
		}
	}, "peer %d's heartbeat to reach peer %d", from, to)
}

// Rule: a mesh peer cannot take requests addressed to another peer: its
// hub user may not subscribe to them, and none reaches its own server,
// while the addressee answers them.
func TestMeshPeerCannotTakeAnotherPeersRequests(t *testing.T) {
	m := startMeshPeers(t)
	a := m.hostile(t, 0)
	refusedSubscribe(t, a, events.PeerPrefix+"."+string(m.ids[1])+".>")
	refusedSubscribe(t, a, events.PeerPrefix+".>")
	refusedSubscribe(t, a, ">")

	seen := m.spy(t, 0, events.PeerPrefix+".>", events.PeerPrefix+"."+string(m.ids[1])+".>")
	m.serveEcho(t, 1)
	m.drained(t, 2, 0)
	m.ask(t, 2, 1, "token-bearing request")
	m.drained(t, 2, 0)
	if got := seen(); len(got) > 0 {
		t.Fatalf("peer A's server received requests addressed to peer B: %v", got)
	}
}

// Rule: a mesh peer cannot read another peer's replies: its hub user may
// not subscribe to the other's private inbox nor to _INBOX.>, and none
// reaches its own server, while its own replies still come back.
func TestMeshPeerCannotReadAnotherPeersReplies(t *testing.T) {
	m := startMeshPeers(t)
	a := m.hostile(t, 0)
	refusedSubscribe(t, a, m.hub.InboxPrefix(1)+".>")
	refusedSubscribe(t, a, "_INBOX.>")

	seen := m.spy(t, 0, m.hub.InboxPrefix(1)+".>", "_INBOX.>")
	m.serveEcho(t, 2)
	m.drained(t, 2, 0)
	m.ask(t, 1, 2, "reply for B only") // C answers on B's private inbox
	m.drained(t, 2, 0)
	if got := seen(); len(got) > 0 {
		t.Fatalf("peer A's server received replies meant for peer B: %v", got)
	}
	m.ask(t, 0, 2, "reply for A") // A's own replies still arrive
}

// Rule: a mesh peer announces presence only as itself.
func TestMeshPeerCannotAnnounceAnotherPeer(t *testing.T) {
	m := startMeshPeers(t)
	a := m.hostile(t, 0)
	refusedPublish(t, a, events.PresenceSubject(m.ids[1]))
}
