package ota

import (
	"time"

	"github.com/factsync/factsync/events"
)

// Category is how an operation relates to upgrade ceremonies, after the
// operation categories of the seed protocol.
type Category string

// The categories.
const (
	// CategoryA operations apply optimistically: they never wait for a
	// ceremony. Their results are facts joined by union, which every
	// protocol version folds the same way, so there is nothing to agree
	// on first.
	CategoryA Category = "A"
	// CategoryC operations block until a ceremony completes: they change
	// what the whole fleet accepts, so a threshold of approvers and a
	// quorum of ready peers must agree first.
	CategoryC Category = "C"
)

// Operation names an operation in the category map.
type Operation string

// The operations.
const (
	OpJournal     Operation = "journal"     // folding and serving accepted facts
	OpAntiEntropy Operation = "antientropy" // reconciling fact sets with peers
	OpSnapshot    Operation = "snapshot"    // cutting and serving snapshots
	OpReceipts    Operation = "receipts"    // appending to the transparency log
	// OpSoftForkActivation puts a compatible release in force. It goes
	// through the ceremony like any release, though old peers are not
	// affected.
	OpSoftForkActivation Operation = "soft_fork_activation"
	// OpHardForkActivation raises the sync protocol version, after which
	// older peers are refused.
	OpHardForkActivation Operation = "hard_fork_activation"
)

// Categories is the operation-category map (docs/ota.md explains it).
var Categories = map[Operation]Category{
	OpJournal:            CategoryA,
	OpAntiEntropy:        CategoryA,
	OpSnapshot:           CategoryA,
	OpReceipts:           CategoryA,
	OpSoftForkActivation: CategoryC,
	OpHardForkActivation: CategoryC,
}

// ActivationOf is the operation that activates a release of kind.
func ActivationOf(kind events.OTAKind) Operation {
	if kind == events.OTAHardFork {
		return OpHardForkActivation
	}
	return OpSoftForkActivation
}

// Admit enforces the category map for op at time at. A category A
// operation is admitted whatever the ceremony c (which may be nil): it
// never waits. A category C operation is admitted only when its ceremony
// has completed: approvals at the threshold and readiness at the quorum
// (state committed), the activation time reached and the deadline not
// passed. Everything that activates a release goes through Admit.
func Admit(op Operation, c *events.OTACeremony, at time.Time) error {
	switch Categories[op] {
	case CategoryA:
		return nil
	case CategoryC:
	default:
		return events.Errorf(events.ReasonMalformed, "operation %q has no category", op)
	}
	if c == nil {
		return events.Errorf(events.ReasonConflict, "%s needs a completed ceremony, and none is named", op)
	}
	switch {
	case c.State != events.OTAStateCommitted:
		return events.Errorf(events.ReasonConflict, "%s of %s waits for the ceremony to commit: it is %s with %d/%d approvals and %d/%d peers ready",
			op, c, c.State, len(c.Approvals), c.Threshold, readyCount(*c), c.Quorum)
	case len(c.Approvals) < c.Threshold || readyCount(*c) < c.Quorum:
		return events.Errorf(events.ReasonConflict, "%s of %s lacks approvals or readiness", op, c)
	case at.Before(c.Proposal.ActivateAt):
		return events.Errorf(events.ReasonConflict, "%s of %s is scheduled for %s", op, c, c.Proposal.ActivateAt.UTC().Format(time.RFC3339))
	case !at.Before(c.Proposal.Deadline):
		return events.Errorf(events.ReasonExpired, "%s of %s missed its deadline %s", op, c, c.Proposal.Deadline.UTC().Format(time.RFC3339))
	}
	return nil
}
