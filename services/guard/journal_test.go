package guard

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestJournalWriterRecoversFromDuplicateInBatch covers err_code 10201: an
// atomic batch holding a Nats-Msg-Id still in JOURNAL's dedup window is
// refused whole, as a redelivered INGRESS message mixing stored and new
// facts would be. The writer falls back to one-at-a-time publishes and
// every fact ends up in JOURNAL exactly once.
func TestJournalWriterRecoversFromDuplicateInBatch(t *testing.T) {
	h := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	journal, err := h.JS.Stream(ctx, events.StreamJournal)
	if err != nil {
		t.Fatal(err)
	}
	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	a, b, c := d.fact(t, "notes", "a", d.token), d.fact(t, "notes", "b", d.token), d.fact(t, "notes", "c", d.token)
	tokens := map[string][]byte{events.TokenHash(d.token): d.token}

	entries := func(facts ...*events.Fact) []journalEntry {
		var es []journalEntry
		for _, f := range facts {
			es = append(es, journalEntry{fact: f})
		}
		return es
	}
	w := newJournalWriter(h.Conn, h.JS, journal, 0)
	stats, err := w.write(ctx, entries(a, b), tokens)
	if err != nil || stats.batches != 1 || stats.fallback != 0 {
		t.Fatalf("first write: %+v, %v; want one atomic batch", stats, err)
	}

	// The server's behaviour the guard must handle.
	err = w.publishAtomic(ctx, []*nats.Msg{
		journalMsg(events.JournalSubject(d.auth(), "notes"), a.ID.String(), a.Marshal(), nil),
		journalMsg(events.JournalSubject(d.auth(), "notes"), c.ID.String(), c.Marshal(), nil),
	})
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeBatchDuplicate {
		t.Fatalf("atomic batch with a stored id: %v, want err_code %d", err, errCodeBatchDuplicate)
	}

	// A fresh writer (a restarted guard) redelivering a, b and c: it finds
	// the token already stored, the batch hits 10201, the fallback lands c.
	w2 := newJournalWriter(h.Conn, h.JS, journal, 0)
	stats, err = w2.write(ctx, entries(a, b, c, a), tokens)
	if err != nil {
		t.Fatal(err)
	}
	if stats.batches != 0 || stats.fallback != 3 {
		t.Fatalf("redelivery: %+v, want the 3 facts (and not the stored token) published one at a time", stats)
	}

	facts := readStream(t, h.JS, events.StreamJournal, events.JournalPrefix+".>")
	seen := map[string]int{}
	for _, m := range facts {
		seen[m.Headers().Get(events.HeaderMsgID)]++
	}
	for _, f := range []*events.Fact{a, b, c} {
		if seen[f.ID.String()] != 1 {
			t.Errorf("fact %s is in JOURNAL %d times, want once", f.ID, seen[f.ID.String()])
		}
	}
	if len(facts) != 3 {
		t.Errorf("JOURNAL holds %d facts, want 3", len(facts))
	}
	if n := streamMsgs(t, h.JS, events.StreamJournal, events.TokenPrefix+".>"); n != 1 {
		t.Errorf("JOURNAL holds %d tokens, want 1", n)
	}
}
