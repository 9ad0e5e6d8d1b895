package bench

import (
	"context"
	"testing"
)

func TestReconcileSmall(t *testing.T) {
	report, err := Reconcile(context.Background(), Options{N: 5_000, Ds: []int{0, 1, 100, 1000}, Seed: 1, SketchSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Results) != 4 {
		t.Fatalf("%d results, want 4", len(report.Results))
	}
	for _, r := range report.Results {
		for name, p := range map[string]Protocol{"negentropy": r.Negentropy, "riblt": r.RIBLT} {
			if !p.Correct {
				t.Errorf("d=%d %s did not learn exactly the difference: %+v", r.D, name, p)
			}
		}
		if r.NaiveBytes < 5_000*32 {
			t.Errorf("d=%d naive bytes %d, below n*32", r.D, r.NaiveBytes)
		}
	}
	one := report.Results[1].Negentropy
	if one.RoundTrips > 3 || one.BytesTotal >= 4096 {
		t.Errorf("d=1 negentropy: %d round trips, %d bytes; want <= 3 and < 4 KB", one.RoundTrips, one.BytesTotal)
	}
	if r := report.Results[3]; r.RIBLT.VsLowerBound > 2 {
		t.Errorf("d=1000 riblt: %.2fx the lower bound, want <= 2", r.RIBLT.VsLowerBound)
	}
	if _, err := Reconcile(context.Background(), Options{N: -1}); err == nil {
		t.Error("negative n accepted")
	}
}

// BenchmarkReconcileMillion is the headline measurement; see
// Reconcile for the figures it reports through `factsync bench reconcile`.
func BenchmarkReconcileMillion(b *testing.B) {
	for range b.N {
		report, err := Reconcile(context.Background(), Options{N: 1_000_000, Ds: []int{1, 100, 1000, 10000}, Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range report.Results {
			b.Logf("d=%d negentropy %+v riblt %+v", r.D, r.Negentropy, r.RIBLT)
		}
	}
}
