package events

import (
	eventsv1 "github.com/factsync/factsync/events/v1"
)

// Pruning: an authority's JOURNAL history that a committed, verified
// snapshot covers is dropped (docs/snapshot.md, "Pruning"). The snapshot
// service plans a prune and asks the guard, which alone may change
// JOURNAL, to carry it out; the guard checks the plan against JOURNAL
// before it removes anything.

// Snapshot operations added for pruning and bootstrap, answered on
// ServiceSubject(SnapshotProto, op, auth) like the others.
const (
	// SnapshotOpPrune drops the authority's JOURNAL history before its
	// latest committed snapshot's cut: SnapshotPruneRequest ->
	// SnapshotPruned.
	SnapshotOpPrune = "prune"
	// SnapshotOpFloor says what this peer's snapshots settle:
	// SnapshotFloorRequest -> SnapshotFloor. Anti-entropy asks it before
	// a session.
	SnapshotOpFloor = "floor"
)

// GuardOpPrune is the guard's own prune operation, on
// ServiceSubject(GuardProto, GuardOpPrune, auth): GuardPruneRequest ->
// GuardPruneReply. Only services may publish on fs.svc.>, and the guard
// checks the token of the request that started the prune (the `snapshot`
// right on the authority) again.
const GuardOpPrune = "prune"

// GuardOpVerify checks the device signature of every fact of an
// eventsv1.FactBatch of the authority (ServiceSubject(GuardProto,
// GuardOpVerify, auth)) and answers GuardVerifyReply, or the first failure
// with its reason. A restore asks it before loading a snapshot, so each
// signature is verified once, by the guard that will load the fact.
const GuardOpVerify = "verify"

// GuardVerifyReply counts the facts whose signatures verified.
type GuardVerifyReply struct {
	Verified int `json:"verified"`
}

// SnapshotPruneRequest asks the snapshot service to prune the authority.
type SnapshotPruneRequest struct {
	Collection string `json:"collection"` // always "*"
}

// SnapshotPruned reports a prune; it is the prune request's reply and is
// announced on SnapshotPrunedSubject (core NATS) once JOURNAL changed.
type SnapshotPruned struct {
	Authority  AuthorityID `json:"authority"`
	Snapshot   string      `json:"snapshot"`
	CutSeconds uint32      `json:"cut_seconds"`
	// Below is, per collection, the JOURNAL sequence below which the prune
	// removed the collection's messages (nil when nothing was removed).
	Below map[string]uint64 `json:"below,omitempty"`
	// Facts is how many distinct facts left JOURNAL; Messages how many
	// JOURNAL messages; Republished how many facts below Below were
	// written again above it so that they stay.
	Facts       uint64 `json:"facts"`
	Messages    uint64 `json:"messages"`
	Republished int    `json:"republished"`
}

// EncodeSnapshotPruned encodes p as an eventsv1.SnapshotPruned, the form
// published on SnapshotPrunedSubject.
func EncodeSnapshotPruned(p SnapshotPruned) ([]byte, error) {
	return encodeEvent("snapshot prune", &eventsv1.SnapshotPruned{
		Authority:   string(p.Authority),
		Snapshot:    p.Snapshot,
		CutSeconds:  p.CutSeconds,
		Below:       p.Below,
		Facts:       p.Facts,
		Messages:    p.Messages,
		Republished: int64(p.Republished),
	})
}

// DecodeSnapshotPruned decodes a prune notice; one that names no valid
// authority is refused with ReasonMalformed.
func DecodeSnapshotPruned(data []byte) (SnapshotPruned, error) {
	var m eventsv1.SnapshotPruned
	if err := decodeEvent("snapshot prune", data, &m); err != nil {
		return SnapshotPruned{}, err
	}
	p := SnapshotPruned{
		Authority:   AuthorityID(m.GetAuthority()),
		Snapshot:    m.GetSnapshot(),
		CutSeconds:  m.GetCutSeconds(),
		Below:       m.GetBelow(),
		Facts:       m.GetFacts(),
		Messages:    m.GetMessages(),
		Republished: int(m.GetRepublished()),
	}
	if err := p.Authority.Validate(); err != nil {
		return SnapshotPruned{}, err
	}
	return p, nil
}

// SnapshotPrunedSubject announces prunes of auth (core NATS): anti-entropy
// rebuilds its index of the authority from what JOURNAL still holds.
func SnapshotPrunedSubject(auth AuthorityID) string {
	return join(SnapshotPrefix, "pruned", string(auth))
}

// GuardPruneRequest is a prune plan: per collection, remove the
// authority's messages below Below[collection] from JOURNAL. Of the facts
// there, those before the cut that the fold of the facts before the cut
// does not need go; every other one stays, written again above Below when
// it has no copy there. The guard refuses the plan unless JOURNAL holds
// exactly BeforeCut distinct facts before the cut (none arrived since the
// plan), the plan removes exactly Purge distinct facts, the documents
// folded from what stays are those folded from everything, and every
// reader of JOURNAL has read past what goes.
type GuardPruneRequest struct {
	Snapshot   string            `json:"snapshot"`
	CutSeconds uint32            `json:"cut_seconds"`
	Below      map[string]uint64 `json:"below"`
	BeforeCut  uint64            `json:"before_cut"`
	Purge      uint64            `json:"purge"`
	// NotAfterMillis (Unix ms, 0 for none) is the plan's deadline: the
	// guard removes nothing after it (ReasonExpired). The snapshot service
	// settles a prune it got no answer about only once the deadline has
	// passed, so it never counts, or drops, a prune the guard may still
	// carry out.
	NotAfterMillis int64 `json:"not_after_ms,omitempty"`
}

// GuardPruneReply says what the guard removed and wrote again.
type GuardPruneReply struct {
	Facts       uint64 `json:"facts"`
	Messages    uint64 `json:"messages"`
	Republished int    `json:"republished"`
}

// SnapshotFloorRequest asks for SnapshotFloor.
type SnapshotFloorRequest struct {
	Collection string `json:"collection"` // always "*"
}

// SnapshotFloor is what a peer's snapshots settle for one authority.
type SnapshotFloor struct {
	// SettledCut: before it, this peer holds the state of a verified
	// snapshot but not necessarily every fact (it restored from it, or
	// pruned to it), so it reconciles only facts at or after it. 0 when
	// it holds its whole history.
	SettledCut uint32 `json:"settled_cut,omitempty"`
	// The newest committed snapshot whose content this peer serves, if
	// any: its id, cut, and the fingerprint (hex) and count of every fact
	// before the cut, from its manifest.
	Latest            string `json:"latest,omitempty"`
	LatestCut         uint32 `json:"latest_cut,omitempty"`
	LatestFingerprint string `json:"latest_fingerprint,omitempty"`
	LatestCount       uint64 `json:"latest_count,omitempty"`
}
