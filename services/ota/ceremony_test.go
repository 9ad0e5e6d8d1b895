package ota

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
)

// committedLedger proposes a hard fork at t0, approves it by two of three
// approvers and reports all three peers ready.
func committedLedger(t testing.TB, f fleet, p *Policy) (Ledger, string) {
	t.Helper()
	ev := proposedEvent(proposal(p, "v2.0.0"), t0)
	b := ev.ProposalBytes
	l := mustApply(t, NewLedger(p), ev,
		approvedEvent(f.approvers[0], b, t0.Add(time.Minute)),
		approvedEvent(f.approvers[2], b, t0.Add(2*time.Minute)))
	for i, k := range f.peers {
		l = mustApply(t, l, readinessEvent(k, b, events.OTAReady, t0.Add(time.Duration(3+i)*time.Minute)))
	}
	return l, ev.Proposal
}

// activatedLedger is committedLedger activated at its activation time.
func activatedLedger(t testing.TB, f fleet, p *Policy) Ledger {
	t.Helper()
	l, id := committedLedger(t, f, p)
	return mustApply(t, l, events.OTAEvent{Kind: events.OTAEventActivated, At: l.Ceremonies[id].Proposal.ActivateAt, Proposal: id})
}

func TestCeremonyStates(t *testing.T) {
	f := newFleet()
	p := f.trusted(t)
	ev := proposedEvent(proposal(p, "v2.0.0"), t0)
	b, id := ev.ProposalBytes, ev.Proposal
	state := func(l Ledger) events.OTAState { return l.Ceremonies[id].State }

	l := mustApply(t, NewLedger(p), ev)
	if state(l) != events.OTAStateProposed {
		t.Fatalf("state after proposal = %s", state(l))
	}
	_, err := l.Apply(readinessEvent(f.peers[0], b, events.OTAReady, t0))
	wantReason(t, err, events.ReasonConflict) // peers stage only approved releases

	l = mustApply(t, l, approvedEvent(f.approvers[1], b, t0))
	if state(l) != events.OTAStateProposed {
		t.Fatalf("state after 1 of 2 approvals = %s", state(l))
	}
	_, err = l.Apply(approvedEvent(keyFrom("stranger"), b, t0))
	wantReason(t, err, events.ReasonBadSignature)
	l = mustApply(t, l, approvedEvent(f.approvers[2], b, t0))
	if state(l) != events.OTAStateCollecting {
		t.Fatalf("state after 2 of 2 approvals = %s", state(l))
	}

	l = mustApply(t, l, readinessEvent(f.peers[0], b, events.OTAReady, t0), readinessEvent(f.peers[1], b, events.OTANotReady, t0))
	_, err = l.Apply(readinessEvent(keyFrom("stranger"), b, events.OTAReady, t0))
	wantReason(t, err, events.ReasonBadSignature)
	l = mustApply(t, l, readinessEvent(f.peers[2], b, events.OTAReady, t0))
	if state(l) != events.OTAStateCollecting {
		t.Fatalf("state with 2 of 3 peers ready = %s", state(l))
	}
	l = mustApply(t, l, readinessEvent(f.peers[1], b, events.OTAReady, t0))
	if state(l) != events.OTAStateCommitted {
		t.Fatalf("state with 3 of 3 peers ready = %s", state(l))
	}

	// A peer that finds a fault withdraws the commit.
	withdrawn := mustApply(t, l, readinessEvent(f.peers[1], b, events.OTARejected, t0))
	if state(withdrawn) != events.OTAStateCollecting {
		t.Fatalf("state after a rejection = %s", state(withdrawn))
	}

	activateAt := l.Ceremonies[id].Proposal.ActivateAt
	_, err = l.Apply(events.OTAEvent{Kind: events.OTAEventActivated, At: activateAt.Add(-time.Second), Proposal: id})
	wantReason(t, err, events.ReasonConflict) // category C waits for its time
	_, err = withdrawn.Apply(events.OTAEvent{Kind: events.OTAEventActivated, At: activateAt, Proposal: id})
	wantReason(t, err, events.ReasonConflict) // and for its quorum

	if due := l.Due(activateAt.Add(-time.Second)); len(due) != 0 {
		t.Fatalf("due before the activation time: %+v", due)
	}
	due := l.Due(activateAt)
	if len(due) != 1 || due[0].Kind != events.OTAEventActivated {
		t.Fatalf("due at the activation time: %+v", due)
	}
	l = mustApply(t, l, due...)
	if state(l) != events.OTAStateActivated || l.Active.Protocol != 2 || l.Active.Proposal != id {
		t.Fatalf("after activation: state %s, active %+v", state(l), l.Active)
	}
	_, err = l.Apply(events.OTAEvent{Kind: events.OTAEventAborted, At: activateAt, Proposal: id, AbortReason: events.OTAAbortManual})
	wantReason(t, err, events.ReasonConflict)
	if l.Announced != 1 {
		t.Fatalf("announced %d before any announcement", l.Announced)
	}
	if _, err := l.Announce(events.ActiveVersion{Protocol: 3, Proposal: id}); err == nil {
		t.Fatal("announced a protocol no ceremony activated")
	}
	if l, err = l.Announce(l.Active); err != nil || l.Announced != 2 {
		t.Fatalf("announce: %v (announced %d)", err, l.Announced)
	}
}

func TestSoftForkLeavesProtocol(t *testing.T) {
	f := newFleet()
	p := f.trusted(t)
	prop := proposal(p, "v1.1.0")
	prop.Kind, prop.Protocol = events.OTASoftFork, 0
	ev := proposedEvent(prop, t0)
	l := mustApply(t, NewLedger(p), ev, approvedEvent(f.approvers[0], ev.ProposalBytes, t0), approvedEvent(f.approvers[1], ev.ProposalBytes, t0))
	for _, k := range f.peers {
		l = mustApply(t, l, readinessEvent(k, ev.ProposalBytes, events.OTAReady, t0))
	}
	l = mustApply(t, l, l.Due(prop.ActivateAt)...)
	if l.Ceremonies[ev.Proposal].State != events.OTAStateActivated || l.Active.Protocol != 1 {
		t.Fatalf("soft fork: state %s, active protocol %d", l.Ceremonies[ev.Proposal].State, l.Active.Protocol)
	}
}

func TestDeadlineAborts(t *testing.T) {
	f := newFleet()
	p := f.trusted(t)
	ev := proposedEvent(proposal(p, "v2.0.0"), t0)
	deadline := t0.Add(4 * testNotice)
	for _, tc := range []struct {
		name      string
		approvals int
		want      events.OTAAbortReason
	}{
		{"no approvals", 0, events.OTAAbortInsufficientApprovals},
		{"one of two approvals", 1, events.OTAAbortInsufficientApprovals},
		{"approved but no peer ready", 2, events.OTAAbortTimedOut},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := mustApply(t, NewLedger(p), ev)
			for _, k := range f.approvers[:tc.approvals] {
				l = mustApply(t, l, approvedEvent(k, ev.ProposalBytes, t0))
			}
			if due := l.Due(deadline.Add(-time.Nanosecond)); len(due) != 0 {
				t.Fatalf("due before the deadline: %+v", due)
			}
			wrong := events.OTAEvent{Kind: events.OTAEventAborted, At: deadline.Add(-time.Second), Proposal: ev.Proposal, AbortReason: tc.want}
			_, err := l.Apply(wrong)
			wantReason(t, err, events.ReasonConflict) // not before the deadline
			l = mustApply(t, l, l.Due(deadline)...)
			c := l.Ceremonies[ev.Proposal]
			if c.State != events.OTAStateAborted || c.AbortReason != tc.want {
				t.Fatalf("at the deadline: state %s, reason %q; want aborted, %q", c.State, c.AbortReason, tc.want)
			}
		})
	}
}

// TestApplyIsPure checks that Apply leaves its receiver as it was, so a
// simulator can branch from any ledger.
func TestApplyIsPure(t *testing.T) {
	f := newFleet()
	p := f.trusted(t)
	l, id := committedLedger(t, f, p)
	before, _ := json.Marshal(l.Ceremonies)
	latest := l.Latest["factsync"]

	_ = mustApply(t, l, readinessEvent(f.peers[0], l.Ceremonies[id].ProposalBytes, events.OTARejected, t0),
		approvedEvent(f.approvers[1], l.Ceremonies[id].ProposalBytes, t0),
		proposedEvent(proposal(p, "v9.0.0"), t0))
	_ = mustApply(t, l, l.Due(t0.Add(2*testNotice))...)

	after, _ := json.Marshal(l.Ceremonies)
	if string(before) != string(after) || l.Latest["factsync"] != latest || l.Active.Protocol != 1 {
		t.Fatal("Apply changed the ledger it was called on")
	}
}

func TestCategoryMap(t *testing.T) {
	for _, op := range []Operation{OpJournal, OpAntiEntropy, OpSnapshot, OpReceipts} {
		if Categories[op] != CategoryA {
			t.Errorf("%s is category %q, want A", op, Categories[op])
		}
		if err := Admit(op, nil, t0); err != nil {
			t.Errorf("category A %s blocked: %v", op, err)
		}
	}
	if Categories[OpHardForkActivation] != CategoryC {
		t.Fatalf("hard-fork activation is category %q, want C", Categories[OpHardForkActivation])
	}
	wantReason(t, Admit(OpHardForkActivation, nil, t0), events.ReasonConflict)
	wantReason(t, Admit("reboot", nil, t0), events.ReasonMalformed)

	f := newFleet()
	l, id := committedLedger(t, f, f.trusted(t))
	c := l.Ceremonies[id]
	if err := Admit(OpHardForkActivation, &c, c.Proposal.ActivateAt); err != nil {
		t.Fatalf("completed ceremony blocked: %v", err)
	}
	wantReason(t, Admit(OpHardForkActivation, &c, c.Proposal.Deadline), events.ReasonExpired)
	c.State = events.OTAStateCollecting
	wantReason(t, Admit(OpHardForkActivation, &c, c.Proposal.ActivateAt), events.ReasonConflict)
}
