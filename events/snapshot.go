package events

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Snapshots: a verified cut of one authority's journal, so a new peer
// starts from it and reconciles only what came after. The snapshot service
// owns the SNAPSHOTS stream, the object store of contents, the writer fence
// and the restore markers; everything below is the wire contract that the
// CLI, the guard and anti-entropy code against. docs/snapshot.md describes
// the protocol; services/snapshot holds the logic.
//
// Subjects:
//
//	fs.snapshot.proposed.<auth>     SNAPSHOTS: a proposal (manifest + creator signature)
//	fs.snapshot.approved.<auth>     SNAPSHOTS: one peer's approval of a proposal
//	fs.snapshot.committed.<auth>    SNAPSHOTS: a proposal reached its threshold
//	fs.snapshot.progress.<auth>     core NATS: restore progress (SnapshotProgress)
//
// SnapshotEvent and SnapshotProgress travel as their events/v1 protobuf
// messages (EncodeSnapshotEvent, EncodeSnapshotProgress in
// snapshot_wire.go); the request and reply bodies below are JSON.

// Signing domains of snapshots (see DomainFact).
const (
	// DomainSnapshotManifest prefixes the manifest encoding that the
	// creator and every approver sign.
	DomainSnapshotManifest = "factsync/snapshot-manifest/v1\x00"
)

// SnapshotProto is the request protocol of the snapshot service. The guard
// checks the `snapshot` right on the whole authority for every operation.
const SnapshotProto = "snapshot"

// Snapshot request operations, answered on ServiceSubject(SnapshotProto,
// op, auth).
const (
	SnapshotOpCreate  = "create"  // SnapshotCreateRequest  -> SnapshotInfo
	SnapshotOpList    = "list"    // SnapshotListRequest    -> SnapshotListReply
	SnapshotOpFetch   = "fetch"   // SnapshotFetchRequest   -> SnapshotFetchReply
	SnapshotOpApprove = "approve" // SnapshotApproveRequest -> SnapshotApproveReply
	SnapshotOpRestore = "restore" // SnapshotRestoreRequest -> SnapshotProgress (started)
)

// Storage of the snapshot service.
const (
	// SnapshotObjectBucket holds snapshot contents, named by snapshot id.
	SnapshotObjectBucket = "snapshots"
	// SnapshotFenceBucket holds one writer lease per authority; its
	// revision is the fencing token.
	SnapshotFenceBucket = "snapshot-fence"
	// SnapshotRestoreBucket holds one restore marker per authority.
	SnapshotRestoreBucket = "snapshot-restore"
)

// SnapshotEventKind names an event of the SNAPSHOTS stream; it is the
// third token of its subject.
type SnapshotEventKind string

// The SNAPSHOTS event kinds.
const (
	SnapshotProposed  SnapshotEventKind = "proposed"
	SnapshotApproved  SnapshotEventKind = "approved"
	SnapshotCommitted SnapshotEventKind = "committed"
)

// SnapshotEventSubject is the subject of an event of kind about auth.
func SnapshotEventSubject(kind SnapshotEventKind, auth AuthorityID) string {
	return join(SnapshotPrefix, string(kind), string(auth))
}

// SnapshotProgressSubject carries restore progress for auth (core NATS).
func SnapshotProgressSubject(auth AuthorityID) string {
	return join(SnapshotPrefix, "progress", string(auth))
}

// SnapshotsStream is the event-sourced log of snapshot proposals,
// approvals and commits. Writers append with an expected last sequence,
// so replicas share one linear history.
func SnapshotsStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamSnapshots,
		Description: "snapshot proposals, approvals and commits",
		Subjects: []string{
			SnapshotEventSubject(SnapshotProposed, "*"),
			SnapshotEventSubject(SnapshotApproved, "*"),
			SnapshotEventSubject(SnapshotCommitted, "*"),
		},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  DedupWindow,
		AllowDirect: true,
		DenyDelete:  true,
	}
}

// SnapshotSignature is one Ed25519 signature over DomainSnapshotManifest
// followed by the manifest encoding. Key is the signer's peer public key;
// its PeerID counts once towards a threshold.
type SnapshotSignature struct {
	Peer PeerID `json:"peer"`
	Key  []byte `json:"key"`
	Sig  []byte `json:"sig"`
}

// SnapshotEvent is one event of the SNAPSHOTS stream. Manifest is the
// exact encoding the signatures cover; ID is its hex SHA-256.
type SnapshotEvent struct {
	Kind      SnapshotEventKind `json:"kind"`
	At        time.Time         `json:"at"`
	ID        string            `json:"id"`
	Manifest  []byte            `json:"manifest,omitempty"` // SnapshotProposed
	Signature SnapshotSignature `json:"signature,omitzero"` // proposed: the creator's; approved: the approver's
}

// SnapshotInfo describes one snapshot: the decoded manifest, the exact
// manifest bytes, and the signatures gathered so far.
type SnapshotInfo struct {
	ID          string              `json:"id"`
	Authority   AuthorityID         `json:"authority"`
	CutSeconds  uint32              `json:"cut_seconds"`
	Fingerprint string              `json:"fingerprint"` // hex, negentropy fingerprint of every fact before the cut
	Count       uint64              `json:"count"`       // facts before the cut
	Facts       uint64              `json:"facts"`       // facts the snapshot holds
	Documents   uint64              `json:"documents"`
	ContentSize int64               `json:"content_size"`
	Creator     PeerID              `json:"creator"`
	CreatedAt   time.Time           `json:"created_at"`
	Fence       uint64              `json:"fence"`
	Committed   bool                `json:"committed"`
	Threshold   int                 `json:"threshold"`
	Manifest    []byte              `json:"manifest"`
	Signatures  []SnapshotSignature `json:"signatures"`
}

// SnapshotCreateRequest asks for a snapshot now. CutSeconds 0 lets the
// service choose (its clock less the settle time).
type SnapshotCreateRequest struct {
	Collection string `json:"collection"` // always "*"
	CutSeconds uint32 `json:"cut_seconds,omitempty"`
}

// SnapshotListRequest lists an authority's snapshots, newest first.
type SnapshotListRequest struct {
	Collection    string `json:"collection"`
	CommittedOnly bool   `json:"committed_only,omitempty"`
}

// SnapshotListReply lists snapshots, newest first.
type SnapshotListReply struct {
	Snapshots []SnapshotInfo `json:"snapshots"`
}

// SnapshotFetchRequest reads up to Limit bytes of a snapshot's content from
// Offset.
type SnapshotFetchRequest struct {
	Collection string `json:"collection"`
	ID         string `json:"id"`
	Offset     int64  `json:"offset"`
	Limit      int64  `json:"limit,omitempty"`
}

// SnapshotFetchReply is one chunk of a snapshot's content.
type SnapshotFetchReply struct {
	Data []byte `json:"data"`
	Size int64  `json:"size"` // the whole content
}

// SnapshotApproveRequest asks a peer to check a proposal against its own
// journal and sign it.
type SnapshotApproveRequest struct {
	Collection string `json:"collection"`
	Manifest   []byte `json:"manifest"`
}

// SnapshotApproveReply is the peer's signature over the manifest.
type SnapshotApproveReply struct {
	Signature SnapshotSignature `json:"signature"`
}

// SnapshotRestoreRequest asks the local snapshot service to bootstrap the
// authority from the latest committed snapshot of peer From (reached
// through From's guard with the caller's token). Progress goes to
// SnapshotProgressSubject and, when set, to ProgressInbox.
type SnapshotRestoreRequest struct {
	Collection    string `json:"collection"`
	From          PeerID `json:"from"`
	ProgressInbox string `json:"progress_inbox,omitempty"`
}

// SnapshotPhase is where a restore stands.
type SnapshotPhase string

// The restore phases, in order; a restore ends in complete or failed.
const (
	SnapshotPhaseFetching  SnapshotPhase = "fetching"
	SnapshotPhaseVerifying SnapshotPhase = "verifying"
	SnapshotPhaseLoading   SnapshotPhase = "loading"
	SnapshotPhaseSettling  SnapshotPhase = "settling" // waiting for the guard to accept every fact
	SnapshotPhaseComplete  SnapshotPhase = "complete"
	SnapshotPhaseFailed    SnapshotPhase = "failed"
)

// SnapshotProgress reports a restore's progress: Done of Total units
// (bytes while fetching, facts while loading and settling).
type SnapshotProgress struct {
	Authority AuthorityID   `json:"authority"`
	Snapshot  string        `json:"snapshot"`
	Phase     SnapshotPhase `json:"phase"`
	Done      int64         `json:"done"`
	Total     int64         `json:"total"`
	Reason    Reason        `json:"reason,omitempty"` // SnapshotPhaseFailed
	Detail    string        `json:"detail,omitempty"`
}

// SnapshotRestoreMarker is the per-authority restore record in
// SnapshotRestoreBucket. Until State is complete, the facts in JOURNAL
// before CutSeconds are not known to be the whole cut; anti-entropy must
// not treat the range before the cut as settled.
type SnapshotRestoreMarker struct {
	Snapshot   string        `json:"snapshot"`
	CutSeconds uint32        `json:"cut_seconds"`
	State      SnapshotPhase `json:"state"` // loading or complete
	Batches    int           `json:"batches"`
	Published  int           `json:"published"` // batches already in INGRESS
	UpdatedAt  time.Time     `json:"updated_at"`
}
