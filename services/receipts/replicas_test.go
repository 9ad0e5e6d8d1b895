package receipts

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// publishedCheckpoint is one message on the peer's RECEIPTS checkpoint
// subject.
type publishedCheckpoint struct {
	seq   uint64
	token uint64
	note  []byte
	size  int64
}

// published reads every checkpoint p's peer published, in order.
func published(t *testing.T, p *peer) []publishedCheckpoint {
	t.Helper()
	ctx := context.Background()
	stream, err := p.h.JS.Stream(ctx, events.StreamReceipts)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []publishedCheckpoint
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != events.CheckpointSubject(p.id()) {
			continue
		}
		c, err := OpenCheckpoint(m.Data, p.pub())
		if err != nil {
			t.Fatalf("RECEIPTS sequence %d: %v", seq, err)
		}
		out = append(out, publishedCheckpoint{seq: seq, token: fenceOf(m.Header), note: m.Data, size: c.Size})
	}
	return out
}

func gaugeValue(t *testing.T, r *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == name {
				var total int64
				for _, dp := range g.DataPoints {
					total += dp.Value
				}
				return total
			}
		}
	}
	return 0
}

func (p *peer) writing(t *testing.T) bool {
	return gaugeValue(t, p.meter, "factsync.receipts.writer") == 1
}

// localCheckpoint is the checkpoint in p's own copy of the log.
func (p *peer) localCheckpoint(t *testing.T) (Checkpoint, error) {
	raw, err := os.ReadFile(filepath.Join(p.dir, "log", checkpointFile))
	if err != nil {
		return Checkpoint{}, err
	}
	return OpenCheckpoint(raw, p.pub())
}

// Two replicas of one peer's receipts service: only the lease holder signs
// and publishes, the standby keeps its log warm and serves the same
// checkpoint, takes over when the active replica is paused past its
// lease, and the paused replica's write is refused by the fence when it
// resumes. After a clean stop the first replica takes over again, and
// every checkpoint published across the takeovers is consistent with the
// ones before it.
func TestStandbyTakesOverAndPausedWriterIsFenced(t *testing.T) {
	const leaseTTL = 40 * time.Second // renewals every 10s; checkpoints every 1s
	cfg := Config{CheckpointWait: time.Second, Lease: leaseTTL}
	h := startServer(t)
	key, author := testKey("peer"), testKey("authority")
	a := start(t, h, key, t.TempDir(), New(cfg))
	eventually(t, "a is the writer", func() error {
		if !a.writing(t) {
			return fmt.Errorf("a does not write")
		}
		return nil
	})
	b := start(t, h, key, t.TempDir(), New(cfg))

	first := facts(t, author, "first", 5)
	journal(t, h.JS, first)
	a.checkpointOf(t, 5)
	eventually(t, "b adopted a's checkpoint", func() error {
		c, err := b.localCheckpoint(t)
		if err == nil && c.Size != 5 {
			err = fmt.Errorf("b's checkpoint has %d leaves", c.Size)
		}
		return err
	})
	if b.writing(t) || counterValue(t, b.meter, "factsync.receipts.checkpoints") != 0 {
		t.Fatal("the standby signed while a held the lease")
	}
	if got := counterValue(t, b.meter, "factsync.receipts.appended"); got != 5 {
		t.Fatalf("the standby's log has %d facts, want all 5 (warm)", got)
	}
	var before []publishedCheckpoint
	eventually(t, "a published its checkpoint of 5 leaves", func() error {
		before = published(t, a)
		if len(before) == 0 || before[len(before)-1].size != 5 {
			return fmt.Errorf("published: %d checkpoints", len(before))
		}
		return nil
	})
	tokenA := before[len(before)-1].token

	// Pause a just after a lease renewal, so that moving its clock by one
	// checkpoint interval later runs its checkpoint and not its renewal.
	kv, err := h.JS.KeyValue(context.Background(), WriterBucket)
	if err != nil {
		t.Fatal(err)
	}
	revision := func() uint64 {
		e, err := kv.Get(context.Background(), writerKey)
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision()
	}
	renewed := revision()
	elapsed := a.clock.Now().Sub(time.Unix(1_700_000_000, 0))
	a.clock.Advance(leaseTTL/4 - elapsed%(leaseTTL/4) + time.Second)
	eventually(t, "a renewed before its pause", func() error {
		if rev := revision(); rev <= renewed {
			return fmt.Errorf("lease revision still %d", rev)
		}
		return nil
	})

	second := facts(t, author, "second", 3)
	journal(t, h.JS, second)
	eventually(t, "b takes over once a's lease ran out", func() error {
		b.clock.Advance(leaseTTL / 4)
		if !b.writing(t) {
			return fmt.Errorf("b does not write")
		}
		return nil
	})
	b.checkpointOf(t, 8)
	// b's first message is the takeover: a's last checkpoint again, under
	// b's token.
	takeover := published(t, b)[len(before)]
	tokenB := takeover.token
	if takeover.size != 5 || tokenB <= tokenA {
		t.Fatalf("b took over with a checkpoint of %d leaves under token %d (a's was %d)", takeover.size, tokenB, tokenA)
	}

	// a resumes and signs the facts it followed meanwhile: its publish is
	// refused, it reads b's token and stands by.
	a.clock.Advance(time.Second)
	eventually(t, "a fenced off", func() error {
		if a.writing(t) || !strings.Contains(a.logs.String(), "fenced off by a newer holder") {
			return fmt.Errorf("a still writes")
		}
		return nil
	})
	after := published(t, a)
	for _, c := range after[len(before):] {
		if c.token < tokenB {
			t.Fatalf("a checkpoint of %d leaves under a's stale token %d was published after b took over: %s", c.size, c.token, summary(after))
		}
	}

	// b stops cleanly; a takes over at its next try, and signs on.
	if err := b.halt(t); err != nil {
		t.Fatal(err)
	}
	third := facts(t, author, "third", 2)
	journal(t, h.JS, third)
	eventually(t, "a writes again", func() error {
		a.clock.Advance(leaseTTL / 4)
		if !a.writing(t) {
			return fmt.Errorf("a does not write")
		}
		return nil
	})
	a.checkpointOf(t, 10)

	all := published(t, a)
	for i := 1; i < len(all); i++ {
		older, newer := all[i-1], all[i]
		if newer.token < older.token {
			t.Fatalf("RECEIPTS sequence %d has token %d below the %d before it", newer.seq, newer.token, older.token)
		}
		raw, err := request(h.Conn, OpConsistency, testAuthority, ConsistencyRequest{OldSize: older.size, NewSize: newer.size})
		if err != nil {
			t.Fatal(err)
		}
		var reply ConsistencyReply
		if err := json.Unmarshal(raw, &reply); err != nil {
			t.Fatal(err)
		}
		if err := VerifyConsistency(older.note, newer.note, reply.Proof, a.pub()); err != nil {
			t.Fatalf("published checkpoints of %d and %d leaves: %v", older.size, newer.size, err)
		}
	}
	// The log is JOURNAL in order, whichever replica signed.
	for i, f := range append(append(first, second...), third...) {
		var r Receipt
		if err := json.Unmarshal(a.receipt(t, f), &r); err != nil {
			t.Fatal(err)
		}
		if r.LeafIndex != int64(i) {
			t.Fatalf("fact %d of JOURNAL is leaf %d", i, r.LeafIndex)
		}
	}
}

func summary(cs []publishedCheckpoint) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, " seq %d: %d leaves under token %d;", c.seq, c.size, c.token)
	}
	return b.String()
}
