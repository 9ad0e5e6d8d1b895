package guard

import (
	"context"
	"testing"
	"time"
)

func TestBench(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, cfg := range []BenchConfig{
		{Facts: 500, BatchSize: 100},
		{Facts: 500, BatchSize: 100, Bus: true, StoreDir: t.TempDir()},
	} {
		r, err := Bench(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if r.Facts != 500 || r.DecisionsPerSec <= 0 || r.Ed25519VerifiesPerSec <= 0 || r.P99Millis < r.P50Millis || r.CeilingRatio <= 0 {
			t.Fatalf("implausible result: %s", r.JSON())
		}
		t.Logf("%s", r.JSON())
	}
}

// BenchmarkCheck times the decision of one INGRESS message of 100 facts
// sharing a token, without I/O.
func BenchmarkCheck(b *testing.B) {
	ctx := context.Background()
	now := time.Now()
	subject, batches, err := benchBatches(6400, 100, now)
	if err != nil {
		b.Fatal(err)
	}
	c := newTestChecker(b)
	i := 0
	for b.Loop() {
		if v := c.check(ctx, subject, batches[i%len(batches)], now, delivery{}); len(v.denials) > 0 {
			b.Fatal(v.denials[0])
		}
		i++
	}
	b.ReportMetric(float64(100*b.N)/b.Elapsed().Seconds(), "facts/s")
}

// BenchmarkGuardBus runs the whole guard on an embedded server (fsync
// before ack) and reports INGRESS-to-JOURNAL throughput and latency.
func BenchmarkGuardBus(b *testing.B) {
	for b.Loop() {
		r, err := Bench(context.Background(), BenchConfig{Facts: 20000, BatchSize: 100, Bus: true, StoreDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.DecisionsPerSec, "facts/s")
		b.ReportMetric(r.P50Millis, "p50-ms")
		b.ReportMetric(r.P99Millis, "p99-ms")
		b.ReportMetric(r.Ed25519VerifiesPerSec, "ed25519-verifies/s")
	}
}
