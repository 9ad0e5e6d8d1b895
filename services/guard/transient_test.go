package guard

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
)

// A check that could not run is not a verdict on the fact: the guard
// retries it and never denies a fact INGRESS has acknowledged because its
// own machine was slow. These tests cover the token's datalog deadline
// (wall time, which a starved process misses) and the policy's rate
// windows (which a restarted guard draining a backlog would fill).

// TestTokenDeadlineGrowsWithDelivery: the deadline doubles per delivery
// up to the last one, which is the only one whose timeout is the token's
// fault.
func TestTokenDeadlineGrowsWithDelivery(t *testing.T) {
	var d tokenDeadlines
	want := []time.Duration{100, 100, 200, 400, 800, 1600, 3200, 3200}
	for attempt, w := range want {
		got, last := d.forAttempt(uint64(attempt))
		if w *= time.Millisecond; got != w || last != (w == defaultLastTokenDeadline) {
			t.Errorf("delivery %d: deadline %s, last %v; want %s, last %v", attempt, got, last, w, w == defaultLastTokenDeadline)
		}
	}
	if got, last := (tokenDeadlines{first: -1, last: time.Hour}).forAttempt(1000); got != -1 || last {
		t.Errorf("a passed deadline grew to %s (last %v)", got, last)
	}
}

// TestTokenTimeoutIsRetriedUntilTheLastDeadline: at the checker, a token
// whose evaluation runs past its deadline makes the message a retry,
// unless the deadline was the last one, where the token is denied as too
// costly (bad_token).
func TestTokenTimeoutIsRetriedUntilTheLastDeadline(t *testing.T) {
	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	msg := batch([][]byte{d.token}, d.fact(t, "notes", "slow", d.token))
	subject := events.IngressFactSubject(d.auth())

	c := newTestChecker(t)
	c.tokenDeadlines = tokenDeadlines{first: -1, last: time.Hour}
	v := c.check(context.Background(), subject, msg, testNow, delivery{attempt: 7})
	if !errors.Is(v.retry, capability.ErrEvalTimeout) || len(v.denials)+len(v.accepted) > 0 {
		t.Fatalf("timeout before the last deadline: retry %v, %d denials, %d accepted; want a retry and nothing decided", v.retry, len(v.denials), len(v.accepted))
	}

	c = newTestChecker(t)
	c.tokenDeadlines = tokenDeadlines{first: -1, last: -1}
	v = c.check(context.Background(), subject, msg, testNow, delivery{attempt: 1})
	if v.retry != nil || len(v.denials) != 1 || v.denials[0].GetReason() != string(events.ReasonBadToken) {
		t.Fatalf("timeout at the last deadline: retry %v, denials %v; want one bad_token denial", v.retry, v.denials)
	}
}

// TestTokenTimeoutIsRedeliveredNotDenied: a guard whose every token
// evaluation times out leaves the fact in INGRESS, redelivered, with
// nothing in DENIED; a guard that evaluates in time stores it in JOURNAL.
// Before the fix the timeout was reported as token_expired or no_right
// and the acknowledged fact was lost.
func TestTokenTimeoutIsRedeliveredNotDenied(t *testing.T) {
	h := startServer(t)
	clk := clock.NewFake(testNow)
	starved := New(Config{})
	starved.tokenDeadlines = tokenDeadlines{first: -1, last: time.Hour}
	_, stop := runGuard(t, h, clk, starved)

	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	publishIngress(t, h.JS, d.auth(), batch([][]byte{d.token}, d.fact(t, "notes", "waits", d.token)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitRedelivered(ctx, t, h.JS)
	stop()
	if n := streamMsgs(t, h.JS, events.StreamDenied, events.DeniedPrefix+".>"); n != 0 {
		t.Fatalf("a fact was denied because its token's evaluation ran out of time (%d denials)", n)
	}
	if n := streamMsgs(t, h.JS, events.StreamJournal, events.JournalPrefix+".>"); n != 0 {
		t.Fatalf("a fact was accepted without its token checked")
	}

	runGuard(t, h, clk, New(Config{}))
	eventually(t, 20*time.Second, "the fact accepted by a guard that evaluates in time", func() bool {
		return streamMsgs(t, h.JS, events.StreamJournal, events.JournalPrefix+".>") == 1
	})
	if n := streamMsgs(t, h.JS, events.StreamDenied, events.DeniedPrefix+".>"); n != 0 {
		t.Fatalf("%d denials", n)
	}
}

// TestRateIsCountedWhenFactsArrived: the policy's rate windows count a
// fact at the time INGRESS stored it. A backlog that arrived within the
// limit, window by window, and is decided at once by a restarted guard is
// not rate_limited; facts over the limit within one window of arrival
// still are.
func TestRateIsCountedWhenFactsArrived(t *testing.T) {
	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	subject := events.IngressFactSubject(d.auth())
	c := newTestChecker(t)
	p, err := LoadPolicy(context.Background(), os.DirFS(policyDir(t, func(cfg map[string]any) {
		cfg["rate_limits"].(map[string]any)["default_per_window"] = 3
	})))
	if err != nil {
		t.Fatal(err)
	}
	c.policy.current.Store(p)

	decided := testNow.Add(10 * time.Minute) // all decided at once, long after
	for i := range 4 {
		arrived := testNow.Add(time.Duration(i) * time.Second)
		msg := batch([][]byte{d.token}, d.fact(t, "notes", "a", d.token), d.fact(t, "notes", "b", d.token), d.fact(t, "notes", "c", d.token))
		v := c.check(context.Background(), subject, msg, decided, delivery{arrived: arrived, attempt: 1})
		if v.retry != nil || len(v.denials) != 0 || len(v.accepted) != 3 {
			t.Fatalf("message %d (3 facts in its own window): retry %v, denials %v; want 3 accepted", i, v.retry, v.denials)
		}
	}
	arrived := testNow.Add(time.Hour)
	msg := batch([][]byte{d.token}, d.fact(t, "notes", "a", d.token), d.fact(t, "notes", "b", d.token), d.fact(t, "notes", "c", d.token), d.fact(t, "notes", "d", d.token))
	v := c.check(context.Background(), subject, msg, decided, delivery{arrived: arrived, attempt: 1})
	if len(v.denials) != 1 || v.denials[0].GetReason() != string(events.ReasonRateLimited) {
		t.Fatalf("4 facts arriving in one window of limit 3: denials %v, want one rate_limited", v.denials)
	}
}
