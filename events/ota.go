package events

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// OTA: threshold-approved upgrades and protocol-version activation. The ota
// service owns the OTA stream and the artifact object store; everything
// below is the wire contract that the CLI, the guard and anti-entropy code
// against. The logic (signature checks, the ceremony state machine) lives in
// services/ota; docs/ota.md describes the protocol.
//
// Subjects, all in the OTA stream:
//
//	fs.ota.policy.<root version>    a rotated, threshold-signed root policy
//	fs.ota.proposed.<proposal>      a proposal, as the exact bytes approvers sign
//	fs.ota.approved.<proposal>      one approver's signature
//	fs.ota.readiness.<proposal>     one peer's signed readiness
//	fs.ota.activated.<proposal>     the ceremony activated
//	fs.ota.aborted.<proposal>       the ceremony aborted, with its reason
//	fs.ota.active.protocol          ActiveVersion: the protocol version peers must speak
//
// Every event on the first six subjects is an OTAEvent, the last subject
// carries an ActiveVersion; both travel as their events/v1 protobuf
// messages (EncodeOTAEvent, EncodeActiveVersion in ota_wire.go).

// ProtocolVersion is the sync protocol version this build speaks. A hard
// fork raises it in the release it ships.
const ProtocolVersion uint32 = 1

// HeaderProtocolVersion carries the sync protocol version (decimal) a peer
// speaks, on every peer request and on fact batches a peer forwards. A
// message without it is taken as protocol version 1.
const HeaderProtocolVersion = "Fs-Protocol-Version"

// OTAActiveSubject carries the ActiveVersion; its last message is the one
// in force.
const OTAActiveSubject = OTAPrefix + ".active.protocol"

// OTAArtifactBucket is the JetStream object store holding proposed
// artifacts, named by their proposal id. The ota service owns it; others
// fetch an artifact with the "fetch" request.
const OTAArtifactBucket = "ota-artifacts"

// OTAEventKind names an event of the OTA stream; it is the second token of
// its subject.
type OTAEventKind string

// The OTA event kinds.
const (
	OTAEventPolicy    OTAEventKind = "policy"
	OTAEventProposed  OTAEventKind = "proposed"
	OTAEventApproved  OTAEventKind = "approved"
	OTAEventReadiness OTAEventKind = "readiness"
	OTAEventActivated OTAEventKind = "activated"
	OTAEventAborted   OTAEventKind = "aborted"
)

// OTAEventSubject is the subject of an event of kind about proposal (or,
// for OTAEventPolicy, about the root version).
func OTAEventSubject(kind OTAEventKind, token string) string {
	return join(OTAPrefix, string(kind), token)
}

// OTAStream is the event-sourced log of OTA ceremonies. It is never
// trimmed: replaying it from the first message rebuilds every ceremony,
// the trusted root policy and the active protocol version. Writers append
// with an expected last sequence, so the log is a single linear history
// even with several ota replicas.
func OTAStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamOTA,
		Description: "OTA ceremonies: root policies, proposals, approvals, readiness, activations",
		Subjects:    []string{OTAPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  DedupWindow,
		AllowDirect: true,
		DenyDelete:  true,
		DenyPurge:   true,
	}
}

// OTAKind is the kind of a release.
type OTAKind string

// The release kinds.
const (
	// OTASoftFork is compatible: old peers keep syncing.
	OTASoftFork OTAKind = "soft"
	// OTAHardFork raises the sync protocol version; once it activates,
	// peers below it are refused with ReasonProtocolVersion.
	OTAHardFork OTAKind = "hard"
)

// OTAState is where a ceremony stands.
type OTAState string

// The ceremony states: proposed → collecting → committed → activated, or
// aborted from any state before activated.
const (
	// OTAStateProposed: recorded, gathering approvals.
	OTAStateProposed OTAState = "proposed"
	// OTAStateCollecting: approvals reached the threshold; peers fetch,
	// verify and stage the artifact and report readiness.
	OTAStateCollecting OTAState = "collecting"
	// OTAStateCommitted: readiness reached the quorum; waits for the
	// activation time.
	OTAStateCommitted OTAState = "committed"
	// OTAStateActivated: in force.
	OTAStateActivated OTAState = "activated"
	// OTAStateAborted: will never activate; see the abort reason.
	OTAStateAborted OTAState = "aborted"
)

// OTAAbortReason says why a ceremony aborted.
type OTAAbortReason string

// The abort reasons.
const (
	// OTAAbortTimedOut: the deadline passed with approvals at the
	// threshold but readiness short of the quorum.
	OTAAbortTimedOut OTAAbortReason = "timed_out"
	// OTAAbortInsufficientApprovals: the deadline passed with approvals
	// short of the threshold.
	OTAAbortInsufficientApprovals OTAAbortReason = "insufficient_approvals"
	// OTAAbortManual: an operator aborted it.
	OTAAbortManual OTAAbortReason = "manual"
)

// OTAReadyStatus is what a peer reports about a staged release.
type OTAReadyStatus string

// The readiness statuses.
const (
	OTAReady    OTAReadyStatus = "ready"     // fetched, verified and staged
	OTANotReady OTAReadyStatus = "not_ready" // not yet; may report again
	OTARejected OTAReadyStatus = "rejected"  // verification failed; Reason says why
)

// OTASignature is one Ed25519 signature. KeyID is events.KeyID of the
// signing key; it only selects the key, and a key counts once towards a
// threshold however many signatures name it.
type OTASignature struct {
	KeyID string `json:"keyid"`
	Sig   []byte `json:"sig"`
}

// OTARole is a set of keys and how many of them must sign. Keys are
// lowercase hex Ed25519 public keys.
type OTARole struct {
	Keys      []string `json:"keys"`
	Threshold int      `json:"threshold"`
}

// OTARoot is the root policy of a deployment's releases, like TUF's root
// role: who signs the next root, who approves releases and how many,
// which peers report readiness and how many must be ready, and until when
// the policy may be trusted.
type OTARoot struct {
	Type    string    `json:"type"` // always "factsync-ota-root"
	Version uint64    `json:"version"`
	Expires time.Time `json:"expires"`
	// Root signs this policy and its successor.
	Root OTARole `json:"root"`
	// Approvers sign proposals; Threshold approvals let a release proceed.
	Approvers OTARole `json:"approvers"`
	// Peers report readiness; Threshold of them ready is the quorum.
	Peers OTARole `json:"peers"`
	// MinNotice is the least time between a proposal and its activation.
	MinNotice time.Duration `json:"min_notice"`
}

// OTASignedRoot is a root policy as the exact bytes its signatures cover.
// Signed decodes to an OTARoot; it is never re-encoded.
type OTASignedRoot struct {
	Signed     []byte         `json:"signed"`
	Signatures []OTASignature `json:"signatures"`
}

// OTAArtifact names an artifact by content.
type OTAArtifact struct {
	SHA256 string `json:"sha256"` // lowercase hex
	Size   int64  `json:"size"`
}

// OTAProposal is a proposed release. Approvers sign a digest of its exact
// encoded bytes, which bind the release to one root policy (PolicyVersion
// and PolicyDigest), so approvals cannot move to another release or
// policy.
type OTAProposal struct {
	Package  string      `json:"package"`
	Version  string      `json:"version"` // semantic version, "v1.2.3"; rises for each package
	Kind     OTAKind     `json:"kind"`
	Protocol uint32      `json:"protocol,omitempty"` // hard fork: the new protocol version; soft fork: 0
	Artifact OTAArtifact `json:"artifact"`
	// ActivateAt is the earliest activation, at least the root's
	// MinNotice after the proposal; Deadline is the latest.
	ActivateAt time.Time `json:"activate_at"`
	Deadline   time.Time `json:"deadline"`
	// PolicyVersion and PolicyDigest (hex SHA-256 of the root's Signed
	// bytes) name the root policy the release is proposed under.
	PolicyVersion uint64 `json:"policy_version"`
	PolicyDigest  string `json:"policy_digest"`
}

// OTAApproval is one approver's signature over a proposal.
type OTAApproval struct {
	Proposal  string       `json:"proposal"`
	Signature OTASignature `json:"signature"`
}

// OTAReadiness is one peer's signed report on a proposal. The signature's
// KeyID is the peer's PeerID, whose key the root's Peers role must list.
type OTAReadiness struct {
	Proposal  string         `json:"proposal"`
	Status    OTAReadyStatus `json:"status"`
	Reason    string         `json:"reason,omitempty"`
	Signature OTASignature   `json:"signature"`
}

// OTAEvent is one event of the OTA stream. Kind says which fields are set.
type OTAEvent struct {
	Kind OTAEventKind `json:"kind"`
	// At is when the writer recorded the event, from its injected clock.
	// The ceremony state machine judges expiry and deadlines by it, so
	// replay reaches the same decisions.
	At       time.Time `json:"at"`
	Proposal string    `json:"proposal,omitempty"` // the proposal id

	Root          *OTASignedRoot `json:"root,omitempty"`           // OTAEventPolicy
	ProposalBytes []byte         `json:"proposal_bytes,omitempty"` // OTAEventProposed: the encoded OTAProposal
	Proposer      DeviceID       `json:"proposer,omitempty"`       // OTAEventProposed
	Approval      *OTAApproval   `json:"approval,omitempty"`       // OTAEventApproved
	Readiness     *OTAReadiness  `json:"readiness,omitempty"`      // OTAEventReadiness
	AbortReason   OTAAbortReason `json:"abort_reason,omitempty"`   // OTAEventAborted
	Detail        string         `json:"detail,omitempty"`         // OTAEventAborted
}

// ActiveVersion is the sync protocol version in force on a peer, published
// on OTAActiveSubject when a hard fork activates. Peers below Protocol are
// refused with ReasonProtocolVersion.
type ActiveVersion struct {
	Protocol    uint32    `json:"protocol"`
	Proposal    string    `json:"proposal,omitempty"`
	Package     string    `json:"package,omitempty"`
	Version     string    `json:"version,omitempty"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
}

// BaseActiveVersion is in force before any hard fork activates.
var BaseActiveVersion = ActiveVersion{Protocol: 1}

// Admit returns nil when a peer speaking peerProtocol may sync under a,
// else an error with ReasonProtocolVersion naming both versions.
func (a ActiveVersion) Admit(peerProtocol uint32) error {
	if peerProtocol < a.Protocol {
		return Errorf(ReasonProtocolVersion, "peer speaks sync protocol %d, but protocol %d is active since %s (release %s %s)",
			peerProtocol, a.Protocol, a.ActivatedAt.UTC().Format(time.RFC3339), a.Package, a.Version)
	}
	return nil
}

// SetProtocolVersion marks h with the sync protocol version this build
// speaks. Every request to another peer carries it, so that after a hard
// fork the peers that upgraded accept each other and refuse the rest.
func SetProtocolVersion(h nats.Header) {
	h.Set(HeaderProtocolVersion, strconv.FormatUint(uint64(ProtocolVersion), 10))
}

// PeerProtocolVersion reads HeaderProtocolVersion from h: 1 when absent,
// ReasonMalformed when not a positive decimal.
func PeerProtocolVersion(h nats.Header) (uint32, error) {
	v := h.Get(HeaderProtocolVersion)
	if v == "" {
		return 1, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n == 0 {
		return 0, Errorf(ReasonMalformed, "header %s is %q, want a positive protocol version", HeaderProtocolVersion, v)
	}
	return uint32(n), nil
}

// LoadActiveVersion reads the ActiveVersion in force from the OTA stream:
// BaseActiveVersion when no hard fork has activated (or no OTA stream
// exists yet).
func LoadActiveVersion(ctx context.Context, js jetstream.JetStream) (ActiveVersion, error) {
	stream, err := js.Stream(ctx, StreamOTA)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return BaseActiveVersion, nil
	}
	if err != nil {
		return ActiveVersion{}, Wrap(ReasonUnavailable, err, "read the OTA stream")
	}
	msg, err := stream.GetLastMsgForSubject(ctx, OTAActiveSubject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return BaseActiveVersion, nil
	}
	if err != nil {
		return ActiveVersion{}, Wrap(ReasonUnavailable, err, "read the active protocol version")
	}
	return DecodeActiveVersion(msg.Data)
}

// ProtocolGate tracks the ActiveVersion in force and admits or refuses
// peers by their protocol version. The guard and anti-entropy hold one
// each. It is safe for concurrent use.
type ProtocolGate struct {
	active atomic.Pointer[ActiveVersion]
}

// WatchProtocol returns a ProtocolGate that follows OTAActiveSubject until
// ctx ends. It starts from the version in force now; until an OTA stream
// exists it admits every peer at protocol 1 or above.
func WatchProtocol(ctx context.Context, js jetstream.JetStream) (*ProtocolGate, error) {
	g := &ProtocolGate{}
	if _, err := js.Stream(ctx, StreamOTA); errors.Is(err, jetstream.ErrStreamNotFound) {
		return g, nil
	}
	return g, g.Watch(ctx, js)
}

// Watch loads the version in force from the OTA stream, which must exist,
// and follows it until ctx ends. The zero ProtocolGate admits
// BaseActiveVersion until then.
func (g *ProtocolGate) Watch(ctx context.Context, js jetstream.JetStream) error {
	current, err := LoadActiveVersion(ctx, js)
	if err != nil {
		return err
	}
	g.Set(current)
	cons, err := js.OrderedConsumer(ctx, StreamOTA, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{OTAActiveSubject},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return Wrap(ReasonUnavailable, err, "watch the active protocol version")
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if a, err := DecodeActiveVersion(m.Data()); err == nil {
			g.Set(a)
		}
	})
	if err != nil {
		return Wrap(ReasonUnavailable, err, "watch the active protocol version")
	}
	go func() {
		<-ctx.Done()
		cc.Stop()
	}()
	return nil
}

// Set makes a the version in force, unless a higher one already is: the
// protocol version never goes down.
func (g *ProtocolGate) Set(a ActiveVersion) {
	for {
		old := g.active.Load()
		if old != nil && old.Protocol >= a.Protocol {
			return
		}
		if g.active.CompareAndSwap(old, &a) {
			return
		}
	}
}

// Active returns the version in force.
func (g *ProtocolGate) Active() ActiveVersion {
	if a := g.active.Load(); a != nil {
		return *a
	}
	return BaseActiveVersion
}

// Admit refuses, with ReasonProtocolVersion, a peer below the version in
// force.
func (g *ProtocolGate) Admit(peerProtocol uint32) error { return g.Active().Admit(peerProtocol) }

// AdmitHeader reads the peer's protocol version from h and admits it.
func (g *ProtocolGate) AdmitHeader(h nats.Header) error {
	v, err := PeerProtocolVersion(h)
	if err != nil {
		return err
	}
	return g.Admit(v)
}

// OTA request operations, answered on ServiceSubject("ota", op, auth) where
// auth is the deployment's release authority. OTA requests concern the
// authority as a whole, so the guard checks the right on collection "*"
// (capability.AnyCollection). OTARights maps each operation to the
// operation its token must grant.
const (
	OTAOpPropose = "propose" // OTAProposeRequest -> OTAStatusReply
	OTAOpApprove = "approve" // OTAApproveRequest -> OTAStatusReply
	OTAOpReady   = "ready"   // OTAReadyRequest   -> OTAStatusReply
	OTAOpStatus  = "status"  // OTAStatusRequest  -> OTAStatusReply
	OTAOpAbort   = "abort"   // OTAAbortRequest   -> OTAStatusReply
	OTAOpPolicy  = "policy"  // OTAPolicyRequest  -> OTAStatusReply
	OTAOpFetch   = "fetch"   // OTAFetchRequest   -> OTAFetchReply
)

// OTARights is the token operation each OTA request needs.
var OTARights = map[string]string{
	OTAOpPropose: "ota:propose",
	OTAOpApprove: "ota:approve",
	OTAOpReady:   "sync",
	OTAOpStatus:  "read",
	OTAOpAbort:   "ota:propose",
	OTAOpPolicy:  "ota:approve",
	OTAOpFetch:   "sync",
	OTAOpLog:     "sync",
	OTAOpHead:    "sync",
}

// OTAProposeRequest proposes a release and uploads its artifact (at most
// MaxOTAArtifact bytes). PolicyVersion and PolicyDigest may be left empty:
// the service fills in its trusted root.
type OTAProposeRequest struct {
	Collection string      `json:"collection"` // always "*"
	Proposal   OTAProposal `json:"proposal"`
	Artifact   []byte      `json:"artifact"`
}

// MaxOTAArtifact bounds an artifact uploaded in one propose request.
const MaxOTAArtifact = 4 << 20

// OTAApproveRequest adds one approval.
type OTAApproveRequest struct {
	Collection string      `json:"collection"`
	Approval   OTAApproval `json:"approval"`
}

// OTAReadyRequest reports one peer's readiness.
type OTAReadyRequest struct {
	Collection string       `json:"collection"`
	Readiness  OTAReadiness `json:"readiness"`
}

// OTAStatusRequest asks for one ceremony, or for all when Proposal is empty.
type OTAStatusRequest struct {
	Collection string `json:"collection"`
	Proposal   string `json:"proposal,omitempty"`
}

// OTAAbortRequest aborts a ceremony that has not activated.
type OTAAbortRequest struct {
	Collection string `json:"collection"`
	Proposal   string `json:"proposal"`
	Detail     string `json:"detail,omitempty"`
}

// OTAPolicyRequest rotates the root policy. Root must be signed by a
// threshold of the trusted root's keys and of its own.
type OTAPolicyRequest struct {
	Collection string        `json:"collection"`
	Root       OTASignedRoot `json:"root"`
}

// OTAFetchRequest reads up to Limit bytes of a proposal's artifact from
// Offset.
type OTAFetchRequest struct {
	Collection string `json:"collection"`
	Proposal   string `json:"proposal"`
	Offset     int64  `json:"offset"`
	Limit      int64  `json:"limit"`
}

// OTAFetchReply is one chunk of an artifact.
type OTAFetchReply struct {
	Data []byte `json:"data"`
	Size int64  `json:"size"` // the whole artifact
}

// OTAStatusReply is the trusted policy, the version in force and the
// ceremonies asked for.
type OTAStatusReply struct {
	Root       OTASignedRoot `json:"root"`
	Active     ActiveVersion `json:"active"`
	Ceremonies []OTACeremony `json:"ceremonies"`
}

// OTACeremony is where one ceremony stands: the table `factsync ota status`
// prints.
type OTACeremony struct {
	ID            string         `json:"id"`
	State         OTAState       `json:"state"`
	Proposal      OTAProposal    `json:"proposal"`
	ProposalBytes []byte         `json:"proposal_bytes"`
	Proposer      DeviceID       `json:"proposer,omitempty"`
	ProposedAt    time.Time      `json:"proposed_at"`
	Threshold     int            `json:"threshold"`
	Quorum        int            `json:"quorum"`
	Approvals     []OTAApproval  `json:"approvals"`
	Readiness     []OTAReadiness `json:"readiness"`
	AbortReason   OTAAbortReason `json:"abort_reason,omitempty"`
	Detail        string         `json:"detail,omitempty"`
	ClosedAt      time.Time      `json:"closed_at,omitzero"` // activation or abort
}

// String names the ceremony for logs and errors.
func (c OTACeremony) String() string {
	return fmt.Sprintf("%s (%s %s, %s fork)", c.ID, c.Proposal.Package, c.Proposal.Version, c.Proposal.Kind)
}
