package events

import "time"

// Anti-entropy's contract with the CLI and the SDK: the control requests
// a client sends to its own peer's anti-entropy service (the presence
// heartbeats are in presence.go). docs/antientropy.md describes the
// protocol; services/antientropy holds the logic and the peer-to-peer
// session framing (which no client speaks).

// AntiEntropyProto is the request protocol of the anti-entropy service.
// The guard checks the `sync` right on the whole authority for every
// operation.
const AntiEntropyProto = "antientropy"

// Anti-entropy control operations, sent as APISubject(AntiEntropyProto,
// op, auth) and answered on ServiceSubject(AntiEntropyProto, op, auth).
const (
	AntiEntropyOpSync   = "sync"   // SyncRequest -> SyncReply
	AntiEntropyOpStatus = "status" // {}          -> SyncStatus
	// AntiEntropyOpAddPeer adds a static peer (AddPeerRequest ->
	// PeerStatus): kept in StaticPeerBucket, synced at once and on every
	// interval like the peers of the configuration.
	AntiEntropyOpAddPeer = "add_peer"
)

// AddPeerRequest names the peer to add.
type AddPeerRequest struct {
	Peer PeerID `json:"peer"`
}

// SyncRequest asks for a sync of the authority in the subject with Peer,
// or with every present or static peer when Peer is empty. The reply
// comes once every session has ended.
type SyncRequest struct {
	Peer PeerID `json:"peer,omitempty"`
}

// SyncReply answers AntiEntropyOpSync with one report per peer synced.
type SyncReply struct {
	Sessions []SyncReport `json:"sessions"`
}

// SyncReport is one session as the initiating peer saw it.
type SyncReport struct {
	Peer      PeerID       `json:"peer"`
	Authority AuthorityID  `json:"authority"`
	State     SessionState `json:"state"`
	// Mode is the reconciliation protocol, "riblt2" or "negentropy".
	Mode string `json:"mode,omitempty"`
	// Fallback is set when riblt could not hold the difference and the
	// session reconciled with negentropy instead.
	Fallback bool `json:"fallback,omitempty"`
	// Rounds counts reconciliation round trips (symbols or negentropy).
	Rounds int `json:"rounds"`
	// BytesOut and BytesIn count request and reply bodies of the whole
	// session, fact batches included.
	BytesOut int `json:"bytes_out"`
	BytesIn  int `json:"bytes_in"`
	// Pulled counts facts fetched and published into local INGRESS;
	// Pushed those sent to the peer's INGRESS. Each side's guard checks
	// them again, so a fact counted here can still be denied there.
	Pulled int `json:"pulled"`
	Pushed int `json:"pushed"`
	// Extra counts facts among Pulled and Pushed that moved only because
	// their id shares its riblt prefix with a fact the other side lacked.
	// They are harmless (a journal only grows), and two facts sharing a
	// 20-byte prefix are not expected to occur (docs/antientropy.md).
	Extra int `json:"extra,omitempty"`
	// Lag is how many facts this peer lacked when the session began.
	Lag      int       `json:"lag"`
	Started  time.Time `json:"started"`
	Duration string    `json:"duration"`
	// Error and Reason say why a failed session failed; Reason is a
	// reason code (reasons.go).
	Error  string `json:"error,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// SessionState is where a session is in its life.
type SessionState string

// The session states.
const (
	SessionInitializing SessionState = "initializing"
	SessionActive       SessionState = "active"
	SessionCompleted    SessionState = "completed"
	SessionFailed       SessionState = "failed"
)

// PeerStatus is what a peer knows of another.
type PeerStatus struct {
	Peer PeerID `json:"peer"`
	// Static peers come from config, or were added (Added, kept in
	// StaticPeerBucket); the others from presence.
	Static bool `json:"static,omitempty"`
	Added  bool `json:"added,omitempty"`
	// Present is set while the peer's key is in PresenceBucket: it was
	// heard within three of its heartbeat intervals.
	Present   bool      `json:"present"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	Successes int       `json:"successes"`
	Failures  int       `json:"failures"`
	// Score is the success rate weighed down by latency; peers are synced
	// best first.
	Score float64 `json:"score"`
	// LatencyMillis is the smoothed duration of a session.
	LatencyMillis float64 `json:"latency_ms"`
	// RetryAt is when a failing peer may be tried again.
	RetryAt time.Time `json:"retry_at,omitzero"`
}

// SyncStatus answers AntiEntropyOpStatus for the authority in the
// subject.
type SyncStatus struct {
	// Peer is the answering peer's own id.
	Peer  PeerID       `json:"peer"`
	Peers []PeerStatus `json:"peers"`
	// Initiates is set when the peer holds a sync credential for the
	// authority, so it starts sessions for it on its own (on its
	// interval and when a peer connects); without one it only answers
	// other peers' sessions, and a sync request fails with bad_token.
	Initiates bool `json:"initiates"`
	// Sessions are the authority's most recent sessions, oldest first.
	Sessions []SyncReport `json:"sessions"`
	// Open counts responder sessions open now, of every authority.
	Open int `json:"open_sessions"`
}
