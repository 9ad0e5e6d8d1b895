package deploytest

import (
	"fmt"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/nats-io/nats.go"
)

// The rules of the deployed remote peers' users, one test each, on a real
// nats-server started from the dev overlay's config with its two example
// peers: A (hostile) and B. A request carries the requester's bearer sync
// token and a reply carries facts, so no remote peer may see another's.
// Each of these tests fails against a single shared "peer" user that may
// subscribe fs.peer.>, fs.presence.> and _INBOX.> and publish fs.presence.>.

// wait bounds every condition these tests wait on.
const wait = 10 * time.Second

// remotePeers are the example peers' connections to a deployed server,
// and the server's own services and guard.
type remotePeers struct {
	url      string
	a, b     *bustest.Watched
	aID, bID events.PeerID
	services *bustest.Watched
	guard    *bustest.Watched
}

func startRemotePeers(t *testing.T) *remotePeers {
	t.Helper()
	url := startDeployedNATS(t)
	r := &remotePeers{url: url, aID: examplePeers[0], bID: examplePeers[1]}
	r.a = connectAs(t, url, natsauth.RemotePeerUser(r.aID))
	r.b = connectAs(t, url, natsauth.RemotePeerUser(r.bID))
	r.services = bustest.ConnectWatched(t, url, nats.UserInfo("services", "pw-services"), nats.CustomInboxPrefix(natsauth.ServicesMeshInbox))
	r.guard = connectAs(t, url, "guard")
	return r
}

// refusedSubscribe subscribes to subject as c and returns the
// subscription once the server has refused it.
func refusedSubscribe(t *testing.T, c *bustest.Watched, subject string) *nats.Subscription {
	t.Helper()
	sub, err := c.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, wait, func() bool { return c.PermissionViolation(subject) }, "the server to refuse %s's subscription to %s", c.Opts.User, subject)
	return sub
}

// drained waits until a message that from publishes to to's own inbox
// has reached to: a server delivers one connection's messages to another
// in order, so whatever from sent to before has arrived by then.
func drained(t *testing.T, from, to *bustest.Watched) {
	t.Helper()
	subject := fmt.Sprintf("%s.drained.%d", natsauth.InboxPrefix(to.Opts.User), time.Now().UnixNano())
	sub, err := to.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := to.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := from.Publish(subject, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsg(wait); err != nil {
		t.Fatalf("%s's message to %s's inbox did not arrive: %v", from.Opts.User, to.Opts.User, err)
	}
}

// nothingOn fails the test if any of subs received a message.
func nothingOn(t *testing.T, what string, subs ...*nats.Subscription) {
	t.Helper()
	for _, s := range subs {
		if n, _, _ := s.Pending(); n > 0 {
			m, _ := s.NextMsg(0)
			t.Errorf("%s: peer A received %d message(s) on %s, the first on %s", what, n, s.Subject, m.Subject)
		}
	}
}

// Rule: a remote peer cannot take the requests addressed to another peer.
// A's subscriptions to B's requests are refused and receive nothing,
// while B answers the request the services send it.
func TestRemotePeerCannotTakeAnotherPeersRequests(t *testing.T) {
	r := startRemotePeers(t)
	toB := events.PeerSubject(r.bID, "antientropy", "reconcile")
	spies := []*nats.Subscription{
		refusedSubscribe(t, r.a, events.PeerPrefix+"."+string(r.bID)+".>"),
		refusedSubscribe(t, r.a, events.PeerPrefix+".>"),
		refusedSubscribe(t, r.a, ">"),
	}
	if _, err := r.b.Subscribe(toB, func(m *nats.Msg) { _ = m.Respond([]byte("answer")) }); err != nil {
		t.Fatal(err)
	}
	if err := r.b.Flush(); err != nil {
		t.Fatal(err)
	}
	reply, err := r.services.Request(toB, []byte("token-bearing request"), wait)
	if err != nil || string(reply.Data) != "answer" {
		t.Fatalf("peer B did not answer the request addressed to it: %v %v", reply, err)
	}
	drained(t, r.services, r.a)
	nothingOn(t, "the request addressed to peer B", spies...)
}

// Rule: a remote peer cannot read another peer's replies. A may not
// subscribe to B's private inbox nor to the shared _INBOX.>, and receives
// nothing of the reply the guard sends B, while A's own request is
// answered on A's inbox.
func TestRemotePeerCannotReadAnotherPeersReplies(t *testing.T) {
	r := startRemotePeers(t)
	spies := []*nats.Subscription{
		refusedSubscribe(t, r.a, natsauth.InboxPrefix(natsauth.RemotePeerUser(r.bID))+".>"),
		refusedSubscribe(t, r.a, "_INBOX.>"),
	}
	// This peer's guard answers the requests addressed to this peer.
	const local = events.PeerID("localpeeraaaaaaaaaaaaaaaaa")
	toLocal := events.PeerSubject(local, "antientropy", "fetch")
	if _, err := r.guard.Subscribe(toLocal, func(m *nats.Msg) { _ = m.Respond(append([]byte("facts for "), m.Data...)) }); err != nil {
		t.Fatal(err)
	}
	if err := r.guard.Flush(); err != nil {
		t.Fatal(err)
	}
	reply, err := r.b.Request(toLocal, []byte("B"), wait)
	if err != nil || string(reply.Data) != "facts for B" {
		t.Fatalf("peer B's request was not answered: %v %v", reply, err)
	}
	drained(t, r.guard, r.a)
	nothingOn(t, "the reply to peer B", spies...)
	if reply, err := r.a.Request(toLocal, []byte("A"), wait); err != nil || string(reply.Data) != "facts for A" {
		t.Fatalf("peer A's own request was not answered on its inbox: %v %v", reply, err)
	}
}

// Rule: a remote peer announces presence only as itself. The server
// refuses A's heartbeat as B, and a subscriber to fs.presence.> sees only
// A's own.
func TestRemotePeerCannotAnnounceAnotherPeer(t *testing.T) {
	r := startRemotePeers(t)
	heard, err := r.services.SubscribeSync(events.PresencePrefix + ".>")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.services.Flush(); err != nil {
		t.Fatal(err)
	}
	asB, asA := events.PresenceSubject(r.bID), events.PresenceSubject(r.aID)
	for _, subject := range []string{asB, asA} {
		if err := r.a.Publish(subject, []byte(`{"peer":"`+string(r.aID)+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.a.Flush(); err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, wait, func() bool { return r.a.PermissionViolation(asB) }, "the server to refuse peer A's heartbeat as peer B")
	// A's own heartbeat, sent after the forged one, arrives; the forged
	// one would have arrived before it.
	m, err := heard.NextMsg(wait)
	if err != nil {
		t.Fatalf("peer A's own heartbeat did not arrive: %v", err)
	}
	if m.Subject != asA {
		t.Fatalf("a subscriber to presence heard %s from peer A, want only %s", m.Subject, asA)
	}
}
