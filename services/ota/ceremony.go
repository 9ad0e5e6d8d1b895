package ota

import (
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/semver"
)

// Ledger is the state the OTA stream folds to: the trusted root policy,
// every ceremony, the highest version proposed per package, and the
// protocol version in force. Apply is a pure function of (Ledger, event):
// it never mutates its receiver, reads no clock (events carry their time)
// and does no I/O, so replaying the stream, or a simulator feeding events
// from a seed, reaches the same Ledger every time.
type Ledger struct {
	Policy *Policy
	// Ceremonies by proposal id.
	Ceremonies map[string]events.OTACeremony
	// Latest is the highest version ever proposed for each package,
	// aborted or not: a version is never proposed twice.
	Latest map[string]string
	// Active is the protocol version in force, raised by hard forks.
	Active events.ActiveVersion
	// Announced is the protocol of the last ActiveVersion published on
	// events.OTAActiveSubject; when below Active.Protocol, the service
	// publishes Active.
	Announced uint32
}

// NewLedger starts a ledger trusting root and nothing else.
func NewLedger(root *Policy) Ledger {
	return Ledger{
		Policy:     root,
		Ceremonies: map[string]events.OTACeremony{},
		Latest:     map[string]string{},
		Active:     events.BaseActiveVersion,
		Announced:  events.BaseActiveVersion.Protocol,
	}
}

// Apply returns the ledger after ev, or an error saying why ev is refused
// (the ledger is then unchanged). Refused events are never written to the
// stream; if one is found there anyway, the fold skips it, and every
// replica skips it alike.
func (l Ledger) Apply(ev events.OTAEvent) (Ledger, error) {
	switch ev.Kind {
	case events.OTAEventPolicy:
		return l.rotate(ev)
	case events.OTAEventProposed:
		return l.propose(ev)
	case events.OTAEventApproved, events.OTAEventReadiness, events.OTAEventActivated, events.OTAEventAborted:
		c, ok := l.Ceremonies[ev.Proposal]
		if !ok {
			return l, events.Errorf(events.ReasonNotFound, "no proposal %q", ev.Proposal)
		}
		if closed(c.State) {
			return l, events.Errorf(events.ReasonConflict, "ceremony %s is already %s", c, c.State)
		}
		var err error
		switch ev.Kind {
		case events.OTAEventApproved:
			c, err = l.approve(c, ev)
		case events.OTAEventReadiness:
			c, err = l.ready(c, ev)
		case events.OTAEventActivated:
			c, err = l.activate(c, ev)
		case events.OTAEventAborted:
			c, err = abort(c, ev)
		}
		if err != nil {
			return l, err
		}
		return l.with(c), nil
	}
	return l, events.Errorf(events.ReasonMalformed, "unknown OTA event kind %q", ev.Kind)
}

func closed(s events.OTAState) bool {
	return s == events.OTAStateActivated || s == events.OTAStateAborted
}

// with returns a copy of l holding c; it copies the maps it changes.
func (l Ledger) with(c events.OTACeremony) Ledger {
	l.Ceremonies = maps.Clone(l.Ceremonies)
	l.Ceremonies[c.ID] = c
	if c.State == events.OTAStateActivated && c.Proposal.Kind == events.OTAHardFork {
		l.Active = events.ActiveVersion{
			Protocol: c.Proposal.Protocol, Proposal: c.ID,
			Package: c.Proposal.Package, Version: c.Proposal.Version, ActivatedAt: c.ClosedAt,
		}
	}
	return l
}

func (l Ledger) rotate(ev events.OTAEvent) (Ledger, error) {
	if ev.Root == nil {
		return l, events.Errorf(events.ReasonMalformed, "policy event carries no root")
	}
	next, err := l.Policy.Rotate(*ev.Root, ev.At)
	if err != nil {
		return l, err
	}
	l.Policy = next
	return l, nil
}

func (l Ledger) propose(ev events.OTAEvent) (Ledger, error) {
	prop, err := DecodeProposal(ev.ProposalBytes)
	if err != nil {
		return l, err
	}
	id := ProposalID(ev.ProposalBytes)
	if ev.Proposal != id {
		return l, events.Errorf(events.ReasonMalformed, "proposal event names id %q, but its bytes have id %q", ev.Proposal, id)
	}
	if _, dup := l.Ceremonies[id]; dup {
		return l, events.Errorf(events.ReasonConflict, "proposal %s exists already", id)
	}
	if err := l.Policy.CheckProposal(prop, ev.At, l.Active.Protocol); err != nil {
		return l, err
	}
	if latest, ok := l.Latest[prop.Package]; ok && semver.Compare(prop.Version, latest) <= 0 {
		return l, events.Errorf(events.ReasonRollback, "package %s version %s is not above %s, the highest version proposed so far", prop.Package, prop.Version, latest)
	}
	c := events.OTACeremony{
		ID: id, State: events.OTAStateProposed,
		Proposal: prop, ProposalBytes: ev.ProposalBytes, Proposer: ev.Proposer, ProposedAt: ev.At,
		Threshold: l.Policy.Threshold(), Quorum: l.Policy.Quorum(),
	}
	l.Latest = maps.Clone(l.Latest)
	l.Latest[prop.Package] = prop.Version
	return l.with(c), nil
}

// checkSigningWindow refuses a signature recorded after the deadline, under
// an expired policy, or under a policy other than the one the proposal was
// made under (a rotation strands open ceremonies: their approvals were
// given under the old keys).
func (l Ledger) checkSigningWindow(c events.OTACeremony, at time.Time) error {
	if !at.Before(c.Proposal.Deadline) {
		return events.Errorf(events.ReasonExpired, "ceremony %s passed its deadline %s", c, c.Proposal.Deadline.UTC().Format(time.RFC3339))
	}
	if err := l.Policy.CheckFresh(at); err != nil {
		return err
	}
	if c.Proposal.PolicyDigest != l.Policy.DigestHex() {
		return events.Errorf(events.ReasonConflict, "ceremony %s was proposed under root policy version %d, but version %d is trusted now", c, c.Proposal.PolicyVersion, l.Policy.Version)
	}
	return nil
}

func (l Ledger) approve(c events.OTACeremony, ev events.OTAEvent) (events.OTACeremony, error) {
	if ev.Approval == nil {
		return c, events.Errorf(events.ReasonMalformed, "approval event carries no approval")
	}
	if err := l.checkSigningWindow(c, ev.At); err != nil {
		return c, err
	}
	a := *ev.Approval
	if err := l.Policy.VerifyApproval(c.ProposalBytes, a); err != nil {
		return c, err
	}
	if slices.ContainsFunc(c.Approvals, func(x events.OTAApproval) bool { return x.Signature.KeyID == a.Signature.KeyID }) {
		return c, events.Errorf(events.ReasonConflict, "approver %s has approved %s already; an approver counts once", a.Signature.KeyID, c)
	}
	c.Approvals = append(slices.Clip(c.Approvals), a)
	if c.State == events.OTAStateProposed && len(c.Approvals) >= c.Threshold {
		c.State = events.OTAStateCollecting
	}
	return c, nil
}

func (l Ledger) ready(c events.OTACeremony, ev events.OTAEvent) (events.OTACeremony, error) {
	if ev.Readiness == nil {
		return c, events.Errorf(events.ReasonMalformed, "readiness event carries no readiness")
	}
	if c.State == events.OTAStateProposed {
		return c, events.Errorf(events.ReasonConflict, "ceremony %s has %d of %d approvals; peers stage a release only once it is approved", c, len(c.Approvals), c.Threshold)
	}
	if err := l.checkSigningWindow(c, ev.At); err != nil {
		return c, err
	}
	r := *ev.Readiness
	if err := l.Policy.VerifyReadiness(c.ProposalBytes, r); err != nil {
		return c, err
	}
	// A peer's latest report replaces its earlier one: not_ready may
	// become ready, and a peer that finds a fault may withdraw.
	c.Readiness = slices.DeleteFunc(slices.Clone(c.Readiness), func(x events.OTAReadiness) bool { return x.Signature.KeyID == r.Signature.KeyID })
	c.Readiness = append(c.Readiness, r)
	// Committed means a quorum is ready now: it is withdrawn if a peer
	// withdraws and the quorum is lost before activation.
	if readyCount(c) >= c.Quorum {
		c.State = events.OTAStateCommitted
	} else {
		c.State = events.OTAStateCollecting
	}
	return c, nil
}

func readyCount(c events.OTACeremony) int {
	n := 0
	for _, r := range c.Readiness {
		if r.Status == events.OTAReady {
			n++
		}
	}
	return n
}

func (l Ledger) activate(c events.OTACeremony, ev events.OTAEvent) (events.OTACeremony, error) {
	if err := Admit(ActivationOf(c.Proposal.Kind), &c, ev.At); err != nil {
		return c, err
	}
	if err := l.Policy.CheckFresh(ev.At); err != nil {
		return c, err
	}
	if c.Proposal.Kind == events.OTAHardFork && c.Proposal.Protocol <= l.Active.Protocol {
		return c, events.Errorf(events.ReasonRollback, "ceremony %s would set protocol %d, but %d is in force", c, c.Proposal.Protocol, l.Active.Protocol)
	}
	c.State = events.OTAStateActivated
	c.ClosedAt = ev.At
	return c, nil
}

func abort(c events.OTACeremony, ev events.OTAEvent) (events.OTACeremony, error) {
	switch ev.AbortReason {
	case events.OTAAbortManual:
	case events.OTAAbortTimedOut, events.OTAAbortInsufficientApprovals:
		if ev.At.Before(c.Proposal.Deadline) {
			return c, events.Errorf(events.ReasonConflict, "ceremony %s has until %s", c, c.Proposal.Deadline.UTC().Format(time.RFC3339))
		}
		if want := deadlineReason(c); ev.AbortReason != want {
			return c, events.Errorf(events.ReasonConflict, "ceremony %s missed its deadline for %s, not %s", c, want, ev.AbortReason)
		}
	default:
		return c, events.Errorf(events.ReasonMalformed, "abort reason %q is not one of %s, %s, %s", ev.AbortReason,
			events.OTAAbortTimedOut, events.OTAAbortInsufficientApprovals, events.OTAAbortManual)
	}
	c.State = events.OTAStateAborted
	c.AbortReason = ev.AbortReason
	c.Detail = ev.Detail
	c.ClosedAt = ev.At
	return c, nil
}

// deadlineReason is why a ceremony that reached its deadline aborts:
// insufficient_approvals when approvals were short of the threshold, else
// timed_out (readiness was short of the quorum).
func deadlineReason(c events.OTACeremony) events.OTAAbortReason {
	if len(c.Approvals) < c.Threshold {
		return events.OTAAbortInsufficientApprovals
	}
	return events.OTAAbortTimedOut
}

// Due returns the events the passage of time to now makes due, in id
// order: activation of each committed ceremony whose activation time has
// come, and abort of each open ceremony whose deadline has passed. The
// service writes them; a simulator applies them.
func (l Ledger) Due(now time.Time) []events.OTAEvent {
	var out []events.OTAEvent
	for _, id := range slices.Sorted(maps.Keys(l.Ceremonies)) {
		c := l.Ceremonies[id]
		switch {
		case closed(c.State):
		case !now.Before(c.Proposal.Deadline):
			reason := deadlineReason(c)
			out = append(out, events.OTAEvent{Kind: events.OTAEventAborted, At: now, Proposal: id, AbortReason: reason,
				Detail: "deadline passed with " + strconv.Itoa(len(c.Approvals)) + "/" + strconv.Itoa(c.Threshold) + " approvals and " +
					strconv.Itoa(readyCount(c)) + "/" + strconv.Itoa(c.Quorum) + " peers ready"})
		case c.State == events.OTAStateCommitted && !now.Before(c.Proposal.ActivateAt):
			out = append(out, events.OTAEvent{Kind: events.OTAEventActivated, At: now, Proposal: id})
		}
	}
	return out
}

// Announce records that a was published on events.OTAActiveSubject. Only
// the version a hard-fork activation put in force may be announced.
func (l Ledger) Announce(a events.ActiveVersion) (Ledger, error) {
	if a.Protocol != l.Active.Protocol || a.Proposal != l.Active.Proposal {
		return l, events.Errorf(events.ReasonConflict, "announced protocol %d (proposal %q) is not the one in force, %d (proposal %q)",
			a.Protocol, a.Proposal, l.Active.Protocol, l.Active.Proposal)
	}
	l.Announced = a.Protocol
	return l, nil
}

// ApplyMessage folds one message of the OTA stream: an OTAEvent, or an
// ActiveVersion on events.OTAActiveSubject.
func (l Ledger) ApplyMessage(subject string, data []byte) (Ledger, error) {
	if subject == events.OTAActiveSubject {
		a, err := events.DecodeActiveVersion(data)
		if err != nil {
			return l, err
		}
		return l.Announce(a)
	}
	ev, err := events.DecodeOTAEvent(data)
	if err != nil {
		return l, err
	}
	if want := eventSubject(ev); subject != want {
		return l, events.Errorf(events.ReasonMalformed, "OTA event on %s belongs on %s", subject, want)
	}
	return l.Apply(ev)
}

// eventSubject is where ev is written.
func eventSubject(ev events.OTAEvent) string {
	if ev.Kind == events.OTAEventPolicy && ev.Root != nil {
		if p, err := ParseRoot(*ev.Root); err == nil {
			return events.OTAEventSubject(ev.Kind, strconv.FormatUint(p.Version, 10))
		}
		return events.OTAEventSubject(ev.Kind, "invalid")
	}
	return events.OTAEventSubject(ev.Kind, ev.Proposal)
}
