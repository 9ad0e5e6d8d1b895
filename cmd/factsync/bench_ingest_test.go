package main

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"testing"
)

// `bench ingest --receipts` at a tiny size reports a receipt latency for
// every fact, its spot-checked receipts verified at the leaf indexes it
// measured, and figures that agree with each other. It checks no speed:
// that is what the bench is for.
func TestBenchIngestReportsReceiptLatency(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir()) // the bench's stores
	const facts = 300
	var out, errOut bytes.Buffer
	code := execute(context.Background(), []string{"bench", "ingest", "--receipts", "--json", "--facts", "300", "--batch", "50", "--size", "10"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out.String(), errOut.String())
	}
	var res ingestResult
	dec := json.NewDecoder(&out)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("report is not an ingest result: %v\n%s", err, out.String())
	}
	if res.Facts != facts || res.FactsPerSec <= 0 || res.Seconds <= 0 {
		t.Fatalf("ingest part: %+v", res)
	}
	r := res.Receipts
	if r == nil {
		t.Fatalf("no receipts part in %s", out.String())
	}
	if r.Facts != facts {
		t.Errorf("receipt latency of %d facts, want %d", r.Facts, facts)
	}
	if r.SpotChecked != receiptSpotChecks {
		t.Errorf("spot-checked %d receipts, want %d", r.SpotChecked, receiptSpotChecks)
	}
	if r.Checkpoints < 1 || r.Checkpoints > facts {
		t.Errorf("%d checkpoints covered %d facts", r.Checkpoints, facts)
	}
	order := []float64{0, r.MinMillis, r.P50Millis, r.P90Millis, r.P99Millis, r.MaxMillis}
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] || order[i] == 0 {
			t.Fatalf("latencies are not positive and ordered min ≤ p50 ≤ p90 ≤ p99 ≤ max: %+v", *r)
		}
	}
	if r.Checkpoints > 1 && (r.CheckpointGapP50Millis <= 0 || r.CheckpointGapP50Millis > r.CheckpointGapMaxMillis) {
		t.Errorf("checkpoint gaps: median %v ms, longest %v ms", r.CheckpointGapP50Millis, r.CheckpointGapMaxMillis)
	}
	if r.NewestLeafP50Millis <= 0 || r.NewestLeafP50Millis > r.NewestLeafMaxMillis || r.NewestLeafMaxMillis > r.MaxMillis {
		t.Errorf("the newest leaf of each checkpoint waited a median %v ms, at most %v ms, beside a longest latency of %v ms", r.NewestLeafP50Millis, r.NewestLeafMaxMillis, r.MaxMillis)
	}
	switch {
	case r.Within1s < 0 || r.Within1s > 1:
		t.Errorf("within_1s %v is not a share", r.Within1s)
	case r.MaxMillis <= 1000 && r.Within1s != 1:
		t.Errorf("max %v ms but only %v of facts within 1 s", r.MaxMillis, r.Within1s)
	case r.MinMillis > 1000 && r.Within1s != 0:
		t.Errorf("min %v ms but %v of facts within 1 s", r.MinMillis, r.Within1s)
	case r.MaxMillis > 1000 && r.Within1s == 1:
		t.Errorf("max %v ms but every fact within 1 s", r.MaxMillis)
	}
	if r.GoalMet != (r.P99Millis <= 1000) {
		t.Errorf("goal_met %v with p99 %v ms; the goal is p99 within 1 s", r.GoalMet, r.P99Millis)
	}
}

func TestSpotIndexesSpanTheLog(t *testing.T) {
	for _, c := range []struct {
		facts, n int
		want     []int64
	}{
		{1, 16, []int64{0}},
		{3, 16, []int64{0, 1, 2}},
		{10, 4, []int64{0, 3, 6, 9}},
		{100, 2, []int64{0, 99}},
	} {
		got := spotIndexes(c.facts, c.n)
		if !slices.Equal(got, c.want) {
			t.Errorf("spotIndexes(%d, %d) = %v, want %v", c.facts, c.n, got, c.want)
		}
	}
}
