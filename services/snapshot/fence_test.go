package snapshot

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
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
