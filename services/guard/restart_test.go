package guard

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go/jetstream"
)

// TestCancelMidStreamThenRestart cancels the guard while 10k facts are
// being ingested, starts a new one on the same server, and checks that
// every fact is in JOURNAL exactly once.
func TestCancelMidStreamThenRestart(t *testing.T) {
	const total, perBatch = 10_000, 100
	h := startServer(t)
	clk := clock.NewFake(testNow)
	cfg := Config{AckWait: 5 * time.Second, IngressBatch: 8}

	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	batches := make([][]byte, total/perBatch)
	ids := make([][]string, len(batches))
	var signing sync.WaitGroup
	for b := range batches {
		signing.Go(func() {
			facts := make([]*events.Fact, perBatch)
			for j := range facts {
				facts[j] = d.factAt(t, "notes", "doc", d.token, d.hlc+uint64(b*perBatch+j+1))
				ids[b] = append(ids[b], facts[j].ID.String())
			}
			batches[b] = batch([][]byte{d.token}, facts...)
		})
	}
	signing.Wait()
	want := map[string]bool{}
	for _, batchIDs := range ids {
		for _, id := range batchIDs {
			want[id] = true
		}
	}

	_, stop := runGuard(t, h, clk, New(cfg))
	var published sync.WaitGroup
	published.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var acks []jetstream.PubAckFuture
		for _, b := range batches {
			f, err := h.JS.PublishAsync(events.IngressFactSubject(d.auth()), b)
			if err != nil {
				t.Error(err)
				return
			}
			acks = append(acks, f)
		}
		for _, f := range acks {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				t.Error(err)
			case <-ctx.Done():
				t.Error("ingress publishes not acknowledged")
				return
			}
		}
	})
	journalFacts := func() uint64 { return streamMsgs(t, h.JS, events.StreamJournal, events.JournalPrefix+".>") }
	eventually(t, 60*time.Second, "the first guard to store some facts", func() bool { return journalFacts() >= total/5 })
	stop()
	stoppedAt := journalFacts()
	published.Wait()
	if stoppedAt >= total {
		t.Fatalf("the guard stored all %d facts before it was cancelled; the test proves nothing", total)
	}
	t.Logf("first guard stopped with %d of %d facts in JOURNAL", stoppedAt, total)

	runGuard(t, h, clk, New(cfg))
	eventually(t, 90*time.Second, "every fact in JOURNAL", func() bool { return journalFacts() >= total })

	seen := map[string]int{}
	for _, m := range readStream(t, h.JS, events.StreamJournal, events.JournalPrefix+".>") {
		seen[m.Headers().Get(events.HeaderMsgID)]++
	}
	for id, n := range seen {
		if n != 1 || !want[id] {
			t.Fatalf("fact %s is in JOURNAL %d times (expected: %v)", id, n, want[id])
		}
	}
	if len(seen) != total {
		t.Fatalf("JOURNAL holds %d distinct facts, want %d", len(seen), total)
	}
	eventually(t, 30*time.Second, "INGRESS drained", func() bool {
		return streamMsgs(t, h.JS, events.StreamIngress, events.IngressPrefix+".>") == 0
	})
}
