package antientropy

import (
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
)

// A key spends its burst, then gets one token per 1/rate of fake time; the
// site bucket caps all keys together.
func TestLimiterRefillsOnTheInjectedClock(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_000_000, 0))
	l := newLimiter(clk, 2, 3, 100, 4)
	for i := range 3 {
		if !l.allow("a") {
			t.Fatalf("request %d within a's burst refused", i)
		}
	}
	if l.allow("a") {
		t.Fatal("a's fourth request in no time allowed past a burst of 3")
	}
	if !l.allow("b") {
		t.Fatal("b refused with site tokens left")
	}
	if l.allow("c") {
		t.Fatal("c allowed past the site burst of 4")
	}
	clk.Advance(500 * time.Millisecond) // a earns 1 token, the site 50
	if !l.allow("a") || l.allow("a") {
		t.Fatal("a should get exactly one token after 0.5 s at 2/s")
	}
}

// A session expires after its timeout without requests; a request extends
// it; the table refuses sessions beyond its bound.
func TestSessionsExpireAndAreBounded(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_000_000, 0))
	tab := newSessions(clk, 2, 30*time.Second)
	a, b := &session{auth: "x", device: "d"}, &session{auth: "x", device: "d"}
	if err := tab.add(a); err != nil {
		t.Fatal(err)
	}
	if err := tab.add(b); err != nil {
		t.Fatal(err)
	}
	if err := tab.add(&session{}); events.ReasonOf(err) != events.ReasonRateLimited {
		t.Fatalf("third session: %v, want rate_limited", err)
	}
	if _, err := tab.get(a.id, "x", "other-device"); events.ReasonOf(err) != events.ReasonNotFound {
		t.Fatalf("another device's use of a session: %v, want not_found", err)
	}
	clk.Advance(20 * time.Second)
	if _, err := tab.get(a.id, "x", "d"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(20 * time.Second) // b idle 40 s, a 20 s
	if _, err := tab.get(b.id, "x", "d"); events.ReasonOf(err) != events.ReasonNotFound {
		t.Fatalf("idle session: %v, want not_found (expired)", err)
	}
	if _, err := tab.get(a.id, "x", "d"); err != nil {
		t.Fatalf("extended session expired: %v", err)
	}
	if n := tab.count(); n != 1 {
		t.Fatalf("%d sessions open, want 1", n)
	}
}

// Backoff doubles per failure up to the cap, jittered by the injected
// source within [0.5, 1.5).
func TestBackoffDoublesWithJitter(t *testing.T) {
	s := New(Config{BaseBackoff: time.Second, MaxBackoff: 10 * time.Second, Rand: func() float64 { return 0.5 }})
	p := &peerTable{s: s}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 5: 10 * time.Second, 40: 10 * time.Second} {
		if got := p.backoff(n); got != want {
			t.Errorf("backoff after %d failures = %s, want %s", n, got, want)
		}
	}
	s.cfg.Rand = func() float64 { return 0 }
	if got := p.backoff(1); got != 500*time.Millisecond {
		t.Errorf("lowest jitter gives %s, want 500ms", got)
	}
	if score(9, 0, 0) <= score(5, 4, 0) || score(9, 0, 0) <= score(9, 0, 2000) {
		t.Error("score must rise with successes and fall with latency")
	}
}
