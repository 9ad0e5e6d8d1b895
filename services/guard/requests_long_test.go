package guard

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
)

// TestLongRequestsOutliveTheRequestTimeout: a snapshot's create, approve
// and prune read the authority's whole JOURNAL, and a sync lasts as long as
// its sessions, so the guard waits LongRequestTimeout for them. Stand-in
// services hold those replies until a list request, which no one answers,
// has timed out after RequestTimeout; the four then answer and their
// callers get the answers, not `unavailable`. Past LongRequestTimeout the
// caller is told that the work goes on and where to look.
func TestLongRequestsOutliveTheRequestTimeout(t *testing.T) {
	g := startGuard(t, Config{RequestTimeout: 200 * time.Millisecond, LongRequestTimeout: time.Minute})
	d := newDevice(t, testNow.Add(time.Hour), "*:snapshot", "*:sync")
	auth := d.auth()

	type request struct{ proto, op string }
	long := []request{
		{events.SnapshotProto, events.SnapshotOpCreate}, {events.SnapshotProto, events.SnapshotOpApprove},
		{events.SnapshotProto, events.SnapshotOpPrune}, {events.AntiEntropyProto, events.AntiEntropyOpSync},
	}
	received := make(chan request, len(long))
	release := make(chan struct{})
	for _, r := range long {
		sub, err := g.h.Conn.Subscribe(events.ServiceSubject(r.proto, r.op, auth), func(m *nats.Msg) {
			received <- r
			go func() {
				<-release
				_ = m.Respond([]byte(`{"op":"` + r.op + `"}`))
			}()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	// list has a responder that never answers.
	silent, err := g.h.Conn.Subscribe(events.ServiceSubject(events.SnapshotProto, events.SnapshotOpList, auth), func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = silent.Unsubscribe() })

	ask := func(proto, op, body string) *nats.Msg {
		m := nats.NewMsg(events.APISubject(proto, op, auth))
		m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(d.token))
		m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(d.authPub))
		m.Data = []byte(body)
		reply, err := g.h.Conn.RequestMsg(m, 2*time.Minute)
		if err != nil {
			t.Errorf("%s: %v", op, err)
			return nil
		}
		return reply
	}
	replies := make(chan *nats.Msg, len(long))
	for _, r := range long {
		go func() { replies <- ask(r.proto, r.op, `{"collection":"*"}`) }()
	}
	for range long {
		<-received // each is forwarded, and waiting
	}
	if r := ask(events.SnapshotProto, events.SnapshotOpList, `{"collection":"*"}`); r == nil || r.Header.Get(events.HeaderReason) != string(events.ReasonUnavailable) {
		t.Fatalf("list with no answer: %v; want unavailable after RequestTimeout", r)
	}
	close(release)
	for range long {
		r := <-replies
		if r == nil {
			t.FailNow()
		}
		if r.Header.Get(events.HeaderReason) != "" || !strings.HasPrefix(string(r.Data), `{"op":`) {
			t.Fatalf("a long request held past RequestTimeout got %s; want the service's answer", r.Data)
		}
	}

	// Past LongRequestTimeout: unavailable, and the reply says the work
	// goes on.
	g2 := startGuard(t, Config{RequestTimeout: time.Minute, LongRequestTimeout: 200 * time.Millisecond})
	stuck, err := g2.h.Conn.Subscribe(events.ServiceSubject(events.SnapshotProto, events.SnapshotOpCreate, auth), func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stuck.Unsubscribe() })
	m := nats.NewMsg(events.APISubject(events.SnapshotProto, events.SnapshotOpCreate, auth))
	m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(d.token))
	m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(d.authPub))
	m.Data = []byte(`{"collection":"*"}`)
	r, err := g2.h.Conn.RequestMsg(m, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	e := events.DecodeError(r.Data)
	if e == nil || e.Reason != events.ReasonUnavailable || !strings.Contains(e.Detail, "goes on") || !strings.Contains(e.Detail, "factsync snapshot list") {
		t.Fatalf("a create past LongRequestTimeout: %s; want unavailable saying the work goes on and where to look", r.Data)
	}
}
