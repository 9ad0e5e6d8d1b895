package bench

import (
	"context"
	"testing"
	"time"
)

// TestBenchConverges runs the bootstrap bench small: both new peers must
// end with the source's documents, and the snapshot must hold the live
// state only.
func TestBenchConverges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Facts: 600, StoreDir: t.TempDir(), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.SnapshotFacts != res.Documents || res.AfterCutFacts == 0 || res.AfterCutFacts > res.Facts/20 {
		t.Fatalf("bench shape: %+v", res)
	}
}

// BenchmarkBootstrap compares a new peer bootstrapping from a snapshot
// with one replaying every fact through anti-entropy, history 10x the
// live state:
//
//	go test -run '^$' -bench Bootstrap -benchtime 1x ./services/snapshot/bench
func BenchmarkBootstrap(b *testing.B) {
	for b.Loop() {
		res, err := Run(context.Background(), Config{Facts: 50000, StoreDir: b.TempDir(), Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(res.SnapshotSeconds, "snapshot-s")
		b.ReportMetric(res.ReplaySeconds, "replay-s")
		b.ReportMetric(res.Speedup, "speedup")
		b.ReportMetric(float64(res.SnapshotBytes), "snapshot-bytes")
		b.Logf("%+v", res)
	}
}
