package snapshot

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/lease"
)

func TestFenceTakeoverAfterLeaseRefusesTheOldWriter(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	ctx := context.Background()
	kv, err := bus.ProvisionKV(ctx, h.JS, FenceBucket())
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(testNow)
	auth := newWriter(t, rand.New(rand.NewPCG(1, 1))).auth()
	a := NewFence(kv[0], clk, 10*time.Second, "peera")
	b := NewFence(kv[0], clk, 10*time.Second, "peerb")

	la, err := a.Acquire(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, auth); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("B took a fence A holds: %v", err)
	}
	if err := a.Renew(ctx, &la); err != nil {
		t.Fatalf("A renews its own lease: %v", err)
	}
	clk.Advance(11 * time.Second) // A is paused past its lease
	lb, err := b.Acquire(ctx, auth)
	if err != nil {
		t.Fatalf("B takes over an expired lease: %v", err)
	}
	if lb.Token <= la.Token {
		t.Fatalf("B's token %d is not above A's %d", lb.Token, la.Token)
	}
	if err := a.Renew(ctx, &la); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("A came back and renewed over B: %v", err)
	}
	a.Release(ctx, la) // a stale release must not free B's fence
	if _, err := a.Acquire(ctx, auth); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("A took B's live fence after a stale release: %v", err)
	}
	b.Release(ctx, lb)
	if _, err := a.Acquire(ctx, auth); err != nil {
		t.Fatalf("A takes a released fence: %v", err)
	}
}

// TestLongBuildKeepsTheFence: while Create builds (a long read of JOURNAL
// on a large authority), it renews its fence, so the fake clock passing
// the lease lets no other writer take over; once Create is done the fence
// is free at once, not only after the lease.
func TestLongBuildKeepsTheFence(t *testing.T) {
	rng := rand.New(rand.NewPCG(39, 39))
	clk := clock.NewFake(testNow)
	w := newWriter(t, rng)
	history := w.history(t, rng, 100, 5)
	p := startPeer(t, rng, clk, selfApproved)
	p.ingest(w, history)
	ctx, auth := testCtx(t), w.auth()
	kv, err := p.h.JS.KeyValue(ctx, FenceBucket().Bucket)
	if err != nil {
		t.Fatal(err)
	}
	other := NewFence(kv, clk, DefaultLease, "other")
	p.snap.cfg.whileBuilding = func(events.AuthorityID) {
		clk.Advance(DefaultLease + time.Second) // the build outlasts the lease
		bustest.Eventually(t, 10*time.Second, func() bool {
			e, err := kv.Get(ctx, string(auth))
			if err != nil {
				return false
			}
			var st lease.State
			return json.Unmarshal(e.Value(), &st) == nil && st.Expires.After(clk.Now())
		}, "the builder renews its fence")
		if _, err := other.Acquire(ctx, auth); !events.IsReason(err, events.ReasonConflict) {
			t.Errorf("another writer took the fence during a build: %v", err)
		}
	}
	info, err := p.snap.Create(ctx, auth, history[80].HLC.Seconds(), w.creds())
	if err != nil || !info.Committed {
		t.Fatalf("create: %+v, %v", info, err)
	}
	l, err := other.Acquire(ctx, auth)
	if err != nil {
		t.Fatalf("the fence after Create: %v; want it free", err)
	}
	other.Release(ctx, l)
}
