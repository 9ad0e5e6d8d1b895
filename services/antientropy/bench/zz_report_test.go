package bench

import (
	"context"
	"encoding/json"
	"os"
	"testing"
)

func TestZZReport(t *testing.T) {
	report, err := Reconcile(context.Background(), Options{N: 1_000_000, Ds: []int{1, 100, 1000, 10000}, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	e := json.NewEncoder(os.Stdout)
	e.SetIndent("", " ")
	e.Encode(report)
}
