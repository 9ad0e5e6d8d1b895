package snapshot

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Two replicas of one peer's snapshot service: only the lease holder
// counts facts and triggers snapshots; when it is paused past its lease
// the standby takes over the triggers, and the paused one stops when it
// resumes. The active replica reports each authority's snapshot age.
func TestOneReplicaTriggersAndAStandbyTakesOver(t *testing.T) {
	const leaseTTL = 8 * time.Second
	rng := rand.New(rand.NewPCG(41, 41))
	clkA, clkB := clock.NewFake(testNow), clock.NewFake(testNow)
	w := newWriter(t, rng)
	cfg := Config{EveryFacts: 50, EveryTime: -1, Default: Policy{Threshold: 1}, Lease: leaseTTL}
	p := startPeer(t, rng, clkA, cfg)
	a := p.snap
	bustest.Eventually(t, 10*time.Second, func() bool { return a.active.Load() }, "a is the active replica")
	b := New(cfg)
	p.run(b, clkB)
	ctx, auth := testCtx(t), w.auth()
	history := w.history(t, rng, 120, 5)

	committed := func(n int, clk *clock.Fake) func() bool {
		return func() bool {
			clk.Advance(time.Second)
			list, err := a.List(ctx, auth, true)
			return err == nil && len(list) >= n
		}
	}
	p.ingest(w, history[:60])
	bustest.Eventually(t, 20*time.Second, committed(1, clkA), "a snapshot triggered by a")
	if b.active.Load() {
		t.Fatal("the standby became active while a held the lease")
	}

	// a is paused; b takes over once a's lease ran out on b's clock.
	bustest.Eventually(t, 20*time.Second, func() bool {
		clkB.Advance(leaseTTL / 4)
		return b.active.Load()
	}, "b takes over the triggers")
	// a resumes: its renewal is refused and it stands by.
	clkA.Advance(leaseTTL / 4)
	bustest.Eventually(t, 10*time.Second, func() bool { return !a.active.Load() }, "a stands by after it resumed")
	if !b.active.Load() {
		t.Fatal("b lost the lease to the resumed replica")
	}
	// b alone counts the facts that arrive from then on.
	p.ingest(w, history[60:])
	bustest.Eventually(t, 20*time.Second, committed(2, clkB), "a snapshot triggered by b")

	reader := sdkmetric.NewManualReader()
	reg, err := b.observeAge(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter(Name))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	latest, _ := b.List(ctx, auth, true)
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	want := clkB.Now().Sub(time.Unix(int64(latest[0].CutSeconds), 0)).Seconds()
	var got []float64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[float64]); ok && m.Name == "factsync.snapshot.age" {
				for _, dp := range g.DataPoints {
					if v, _ := dp.Attributes.Value("authority"); v.AsString() == string(auth) {
						got = append(got, dp.Value)
					}
				}
			}
		}
	}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("factsync.snapshot.age of %s = %v, want [%v]", auth, got, want)
	}
}
