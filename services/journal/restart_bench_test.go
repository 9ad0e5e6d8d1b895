package journal_test

import (
	"crypto/ed25519"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var restartFacts = flag.Int("restart-facts", 100_000, "facts in JOURNAL for BenchmarkRestart")

// BenchmarkRestart measures how long a journal takes from Run to ready
// with -restart-facts facts in JOURNAL (1M: -restart-facts=1000000): once
// cold (no checkpoint: every fact is folded, reported as cold-s) and then,
// per iteration, warm (from the checkpoint, which is what ns/op reports).
// The facts are 10 per document, each setting 2 of 5 fields.
func BenchmarkRestart(b *testing.B) {
	n := *restartFacts
	h := startServer(b, bus.EmbeddedConfig{LazySync: true})
	fillJournal(b, h.JS, n)
	dir := b.TempDir()

	start := time.Now()
	j := runJournalWithin(b, h, dir, journal.Config{}, time.Hour)
	cold := time.Since(start)
	if err := j.stop(); err != nil {
		b.Fatal(err)
	}
	st, err := os.Stat(checkpointPath(dir, events.AuthorityIDOf(authorityKey.Public().(ed25519.PublicKey))))
	if err != nil {
		b.Fatal(err)
	}

	b.ResetTimer()
	for b.Loop() {
		j := runJournalWithin(b, h, dir, journal.Config{}, time.Hour)
		b.StopTimer()
		if err := j.stop(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(n), "facts")
	b.ReportMetric(cold.Seconds(), "cold-s")
	b.ReportMetric(float64(st.Size())/1e6, "checkpoint-MB")
}

// fillJournal signs n facts and publishes them to JOURNAL, in chunks so
// that at most one chunk of facts is held in memory.
func fillJournal(b *testing.B, js jetstream.JetStream, n int) {
	const chunk = 10_000
	for from := 0; from < n; from += chunk {
		facts := make([]*events.Fact, min(chunk, n-from))
		var wg sync.WaitGroup
		for w := range 2 { // ed25519 dominates the setup
			wg.Go(func() {
				for k := w; k < len(facts); k += 2 {
					i := from + k
					names := []string{"title", "status", "priority", "owner", "due"}
					fields := map[string]any{names[i%5]: fmt.Sprintf("value %d", i), names[(i+2)%5]: i}
					facts[k] = sign(b, alice, uint64(1_700_000_000_000+i), "tasks", fmt.Sprintf("d%07d", i%(n/10+1)), fields)
				}
			})
		}
		wg.Wait()
		publishMany(b, js, facts)
	}
}

// publishMany writes facts to JOURNAL with async publishes, in windows
// of 2000 so the client never stalls.
func publishMany(b *testing.B, js jetstream.JetStream, facts []*events.Fact) {
	for i, f := range facts {
		if i%2000 == 0 {
			waitPublished(b, js)
		}
		msg := nats.NewMsg(events.JournalSubject(f.Authority, f.Collection()))
		msg.Header.Set(events.HeaderMsgID, f.ID.String())
		msg.Data = f.Marshal()
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	waitPublished(b, js)
}

func waitPublished(b *testing.B, js jetstream.JetStream) {
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishing did not complete")
	}
}
