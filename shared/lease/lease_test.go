package lease

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go/jetstream"
)

var t0 = time.Unix(1_700_000_000, 0)

const ttl = 8 * time.Second

func bucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	h := bustest.Start(t, bus.EmbeddedConfig{LazySync: true})
	kvs, err := bus.ProvisionKV(context.Background(), h.JS, jetstream.KeyValueConfig{Bucket: "test_leases", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return kvs[0]
}

func TestTakeoverAfterExpiryRefusesTheOldHolder(t *testing.T) {
	ctx := context.Background()
	kv := bucket(t)
	clk := clock.NewFake(t0)
	a, b := NewKeeper(kv, "a", ttl, clk), NewKeeper(kv, "b", ttl, clk)

	la, err := a.Acquire(ctx, "writer")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, "writer"); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("b took a lease a holds: %v", err)
	}
	if err := a.Renew(ctx, &la); err != nil {
		t.Fatalf("a renews its own lease: %v", err)
	}
	clk.Advance(ttl + time.Second) // a is paused past its lease
	lb, err := b.Acquire(ctx, "writer")
	if err != nil {
		t.Fatalf("b takes over a lapsed lease: %v", err)
	}
	if lb.Token <= la.Token {
		t.Fatalf("b's token %d is not above a's %d", lb.Token, la.Token)
	}
	if err := a.Renew(ctx, &la); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("a came back and renewed over b: %v", err)
	}
	a.Release(ctx, la) // a stale release must not free b's lease
	if st, err := a.Read(ctx, "writer"); err != nil || st.Holder != "b" {
		t.Fatalf("after a's stale release the lease reads %+v, %v; want b's", st, err)
	}
	b.Release(ctx, lb)
	la, err = a.Acquire(ctx, "writer")
	if err != nil {
		t.Fatalf("a takes a released lease: %v", err)
	}

	// a hands the lease to b; b renews it from the revision it reads.
	if err := a.Transfer(ctx, la, "b"); err != nil {
		t.Fatal(err)
	}
	if err := a.Transfer(ctx, la, "a"); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("a transferred a lease it had handed over already: %v", err)
	}
	st, err := b.Read(ctx, "writer")
	if err != nil || st.Holder != "b" {
		t.Fatalf("after the transfer the lease reads %+v, %v; want b's", st, err)
	}
	if err := b.Renew(ctx, &Lease{Key: "writer", Token: st.Revision}); err != nil {
		t.Fatalf("b renews the lease handed to it: %v", err)
	}
}

// replica is one Campaign on its own fake clock, so the test can pause it
// by not moving its clock.
type replica struct {
	keeper *Keeper
	clock  *clock.Fake
	terms  chan *Term    // a term started
	ended  chan struct{} // a term's lead returned
	result chan error    // Campaign returned
	stop   context.CancelFunc
}

func campaign(t *testing.T, kv jetstream.KeyValue, holder string, lead func(context.Context, *Term) error) *replica {
	t.Helper()
	r := &replica{clock: clock.NewFake(t0), terms: make(chan *Term, 4), ended: make(chan struct{}, 4), result: make(chan error, 1)}
	r.keeper = NewKeeper(kv, holder, ttl, r.clock)
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() {
		r.result <- r.keeper.Campaign(ctx, "writer", nil, func(ctx context.Context, term *Term) error {
			r.terms <- term
			defer func() { r.ended <- struct{}{} }()
			if lead != nil {
				return lead(ctx, term)
			}
			<-ctx.Done()
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-r.result })
	// The campaign's ticker exists once it has made its first try (unless
	// it has ended already).
	waitFor(t, "campaign of "+holder+" ticking", func() bool { return r.clock.Waiters() == 1 || len(r.result) > 0 })
	return r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func receive[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// tick moves r's clock by one renewal interval.
func (r *replica) tick() { r.clock.Advance(ttl / 4) }

func TestCampaignStandbyTakesOverAndPausedLeaderIsFenced(t *testing.T) {
	ctx := context.Background()
	kv := bucket(t)
	a := campaign(t, kv, "a", nil)
	termA := receive(t, "a active", a.terms)
	b := campaign(t, kv, "b", nil)

	// While a renews, b stays a standby. The clocks move in step: a
	// renews, then b tries.
	for range 8 {
		before := termA.Token()
		a.tick()
		waitFor(t, "a renewed", func() bool { return termA.Token() > before })
		b.tick()
	}
	select {
	case <-b.terms:
		t.Fatal("b became active while a renewed its lease")
	default:
	}

	// a is paused (its clock stands still, it renews nothing); b takes over
	// once a's lease has run out on b's clock.
	tokenA := termA.Token()
	for range 5 {
		b.tick()
	}
	termB := receive(t, "b active after a's lease lapsed", b.terms)
	if termB.Token() <= tokenA {
		t.Fatalf("b's token %d is not above a's %d", termB.Token(), tokenA)
	}

	// a resumes: its renewal is refused and its lead is stopped.
	a.tick()
	receive(t, "a's lead stopped", a.ended)
	if st, err := a.keeper.Read(ctx, "writer"); err != nil || st.Holder != "b" {
		t.Fatalf("after a resumed the lease reads %+v, %v; want b's", st, err)
	}

	// b stops cleanly and releases: a takes over at its next try.
	b.stop()
	if err := receive(t, "b's campaign returned", b.result); err != nil {
		t.Fatalf("b's campaign: %v", err)
	}
	b.result <- nil // for the cleanup
	a.tick()
	if again := receive(t, "a active again", a.terms); again.Token() <= termB.Token() {
		t.Fatalf("a's new token %d is not above b's %d", again.Token(), termB.Token())
	}
}

func TestCampaignStepsDownWhenFencedAndStopsOnFailure(t *testing.T) {
	kv := bucket(t)
	fenced := campaign(t, kv, "a", func(context.Context, *Term) error { return ErrFenced })
	receive(t, "a active", fenced.terms)
	receive(t, "a stepped down", fenced.ended)
	fenced.tick()
	receive(t, "a campaigns again after stepping down", fenced.terms)
	fenced.stop()
	if err := receive(t, "a's campaign returned", fenced.result); err != nil {
		t.Fatalf("a campaign that stepped down ended with %v", err)
	}
	fenced.result <- nil

	broken := errors.New("the log is corrupt")
	failing := campaign(t, kv, "b", func(context.Context, *Term) error { return broken })
	receive(t, "b active", failing.terms)
	if err := receive(t, "b's campaign returned", failing.result); !errors.Is(err, broken) {
		t.Fatalf("b's campaign ended with %v, want the lead's failure", err)
	}
	failing.result <- nil
}
