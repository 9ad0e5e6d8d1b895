package guard

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
)

// TestRepliesGoOnlyToInboxes: the guard answers on a request's reply
// subject with its own permissions, and it is JOURNAL's only writer. A
// request that names a journal (or any subject but an inbox) as its reply
// subject is dropped unanswered and unforwarded, so a client cannot have
// the guard append to a journal or forge a change notice.
func TestRepliesGoOnlyToInboxes(t *testing.T) {
	g := startGuard(t, Config{RequestTimeout: 5 * time.Second})
	d := newDevice(t, testNow.Add(time.Hour), "notes:read")
	auth := d.auth()

	forwarded := make(chan string, 8)
	sub, err := g.h.Conn.QueueSubscribe(events.ServiceSubject(events.JournalProto, events.OpQuery, auth), "journal", func(m *nats.Msg) {
		forwarded <- string(m.Data)
		_ = m.Respond([]byte(`{"documents":[]}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	journalSubject := events.JournalSubject(auth, "notes")
	heard, err := g.h.Conn.SubscribeSync(events.JournalAuthorityFilter(auth))
	if err != nil {
		t.Fatal(err)
	}

	query := func(body, reply string) *nats.Msg {
		m := nats.NewMsg(events.APISubject(events.JournalProto, events.OpQuery, auth))
		m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(d.token))
		m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(d.authPub))
		m.Data = []byte(body)
		m.Reply = reply
		return m
	}
	for _, reply := range []string{journalSubject, events.ChangesSubject(auth, "notes", "n1"), "app.replies.1", "_INBOXES.x"} {
		if err := g.h.Conn.PublishMsg(query(`{"collection":"notes"}`, reply)); err != nil {
			t.Fatal(err)
		}
	}
	// A request with an inbox is still answered.
	good, err := g.h.Conn.RequestMsg(query(`{"collection":"notes","limit":1}`, ""), 10*time.Second)
	if err != nil || good.Header.Get(events.HeaderReason) != "" {
		t.Fatalf("a request with an inbox: %v (reason %q)", err, good.Header.Get(events.HeaderReason))
	}

	g.stop() // waits for the requests in flight
	if err := g.h.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	close(forwarded)
	var got []string
	for body := range forwarded {
		got = append(got, body)
	}
	if len(got) != 1 || got[0] != `{"collection":"notes","limit":1}` {
		t.Fatalf("forwarded %q, want only the request with an inbox", got)
	}
	if m, err := heard.NextMsg(10 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("the guard published on a journal subject: %v %v", m, err)
	}
	if n := streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalAuthorityFilter(auth)); n != 0 {
		t.Fatalf("JOURNAL holds %d messages for the authority, want 0", n)
	}
}
