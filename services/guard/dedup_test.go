package guard

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRedeliveryAfterDedupWindowIsStoredOnce: JOURNAL's Nats-Msg-Id dedup
// forgets a fact DedupWindow after storing it. A message redelivered
// later than that, whose fact a guard stored before it could ack, must
// not store the fact again. The fact is put in JOURNAL under a
// Nats-Msg-Id the dedup does not know, which is how JOURNAL looks to a
// publish once the window has passed; the message is redelivered (a first guard cannot evaluate its token in
// time) and then decided by a guard whose clock is past the window.
func TestRedeliveryAfterDedupWindowIsStoredOnce(t *testing.T) {
	h := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d := newDevice(t, time.Now().Add(24*time.Hour), "notes:write")
	stored, fresh := d.fact(t, "notes", "stored", d.token), d.fact(t, "notes", "fresh", d.token)
	// Named as a prune names the facts it writes again: the dedup window
	// does not know the name the guard would publish it under.
	m := journalMsg(events.JournalSubject(d.auth(), "notes"), "prune:snapshot:1:"+stored.ID.String(), stored.Marshal(), nil)
	if _, err := h.JS.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	publishIngress(t, h.JS, d.auth(), batch([][]byte{d.token}, stored, fresh))

	starved := New(Config{})
	starved.tokenDeadlines = tokenDeadlines{first: -1, last: time.Hour}
	_, stop := runGuard(t, h, clock.NewFake(time.Now()), starved)
	waitRedelivered(ctx, t, h.JS)
	stop()

	runGuard(t, h, clock.NewFake(time.Now().Add(events.DedupWindow)), New(Config{}))
	eventually(t, 20*time.Second, "INGRESS drained", func() bool {
		return streamMsgs(t, h.JS, events.StreamIngress, events.IngressPrefix+".>") == 0
	})
	seen := map[string]int{}
	for _, m := range readStream(t, h.JS, events.StreamJournal, events.JournalPrefix+".>") {
		var f *events.Fact
		f, err := events.DecodeFact(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		seen[f.ID.String()]++
	}
	for _, f := range []*events.Fact{stored, fresh} {
		if seen[f.ID.String()] != 1 {
			t.Errorf("fact %s is in JOURNAL %d times, want once", f.ID, seen[f.ID.String()])
		}
	}
}

// BenchmarkDropStored measures the look for facts stored before JOURNAL's
// dedup window: one pass over a subject's messages (headers only) since
// the redelivered message arrived, here the whole of a JOURNAL of
// b.N-independent size, reported as messages read per second.
func BenchmarkDropStored(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			h := startServer(b)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			journal, err := h.JS.Stream(ctx, events.StreamJournal)
			if err != nil {
				b.Fatal(err)
			}
			d := newDevice(b, testNow.Add(time.Hour), "notes:write")
			w := newJournalWriter(h.Conn, h.JS, journal, 0)
			tokens := map[string][]byte{events.TokenHash(d.token): d.token}
			var last *events.Fact
			for i := 0; i < n; i += 1000 {
				var es []journalEntry
				for range min(1000, n-i) {
					last = d.fact(b, "notes", "doc", d.token)
					es = append(es, journalEntry{fact: last})
				}
				if _, err := w.write(ctx, es, tokens); err != nil {
					b.Fatal(err)
				}
			}
			suspect := map[events.FactID]bool{last.ID: true}
			b.ResetTimer()
			for b.Loop() {
				kept, dropped, err := w.dropStored(ctx, []journalEntry{{fact: last}}, suspect, time.Time{})
				if err != nil || dropped != 1 || len(kept) != 0 {
					b.Fatalf("dropStored: %d kept, %d dropped, %v; want the stored fact dropped", len(kept), dropped, err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// TestAcknowledgedLeftoversAreRemoved: INGRESS messages at or below the
// guard consumer's ack floor that the stream still holds (a server crash
// lost their removal) are removed when a guard starts, and messages the
// guard has not acked stay. INGRESS is made a limits stream here, so that
// every acked message stays behind as a crash leaves some.
func TestAcknowledgedLeftoversAreRemoved(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	streams := New(Config{}).Streams()
	for i := range streams {
		if streams[i].Name == events.StreamIngress {
			streams[i].Retention = jetstream.LimitsPolicy
		}
	}
	if err := bus.Provision(ctx, h.JS, streams...); err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(testNow)
	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	_, stop := runGuard(t, h, clk, New(Config{}))
	for _, doc := range []string{"a", "b", "c"} {
		publishIngress(t, h.JS, d.auth(), batch([][]byte{d.token}, d.fact(t, "notes", doc, d.token)))
	}
	eventually(t, 20*time.Second, "3 facts in JOURNAL", func() bool {
		return streamMsgs(t, h.JS, events.StreamJournal, events.JournalPrefix+".>") == 3
	})
	eventually(t, 20*time.Second, "the 3 messages acked", func() bool {
		c, err := h.JS.Consumer(ctx, events.StreamIngress, Name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		return err == nil && info.AckFloor.Stream == 3
	})
	stop()
	if n := streamMsgs(t, h.JS, events.StreamIngress, events.IngressPrefix+".>"); n != 3 {
		t.Fatalf("INGRESS holds %d messages before the restart, want the 3 acked ones", n)
	}

	// A fourth message, which the next guard never manages to decide.
	publishIngress(t, h.JS, d.auth(), batch([][]byte{d.token}, d.fact(t, "notes", "d", d.token)))
	starved := New(Config{})
	starved.tokenDeadlines = tokenDeadlines{first: -1, last: time.Hour}
	runGuard(t, h, clk, starved)
	eventually(t, 20*time.Second, "the acked messages removed from INGRESS", func() bool {
		return streamMsgs(t, h.JS, events.StreamIngress, events.IngressPrefix+".>") == 1
	})
	st, err := h.JS.Stream(ctx, events.StreamIngress)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetMsg(ctx, 4); err != nil {
		t.Fatalf("the message the guard has not acked is gone: %v", err)
	}
}
