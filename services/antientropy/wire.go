package antientropy

import (
	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/riblt"
)

// The operations of the session framing (docs/antientropy.md). A remote
// peer reaches them as events.PeerSubject(peer, Name, op) through that
// peer's guard, which checks a `sync` right on the authority first; the
// local CLI and SDK reach the control operations (OpSync, OpStatus) as
// events.APISubject(Name, op, auth) through the local guard. Both arrive
// here on events.ServiceSubject(Name, op, auth).
const (
	// OpOpen starts a session: OpenRequest in, OpenReply out.
	OpOpen = "open"
	// OpReconcile takes a raw negentropy message (header HeaderSession)
	// and answers the raw reply.
	OpReconcile = "reconcile"
	// OpSymbols takes a SymbolsRequest and answers Count riblt symbols,
	// riblt.SymbolSize (24) bytes each, from the sketch frozen at open.
	OpSymbols = "symbols"
	// OpFetch takes a FetchRequest and answers an encoded
	// eventsv1.FactBatch: the facts named by id or by riblt prefix, and
	// the tokens they cite.
	OpFetch = "fetch"
	// OpPush takes an encoded eventsv1.FactBatch (header HeaderSession)
	// of facts this peer lacks and publishes it unchanged into this peer's
	// INGRESS, where its guard checks every fact: a remote peer may not
	// publish to INGRESS itself. Answers a PushReply.
	OpPush = "push"
	// OpEnd closes a session: EndRequest in, "{}" out.
	OpEnd = "end"

	// OpSync asks this peer to sync the authority now: SyncRequest in,
	// SyncReply out.
	OpSync = events.AntiEntropyOpSync
	// OpStatus answers a Status: peers, their scores and the authority's
	// recent sessions.
	OpStatus = events.AntiEntropyOpStatus
)

// HeaderSession names the session a reconcile or push belongs to.
const HeaderSession = "Fs-Session"

// The reconciliation modes, in the order an initiator prefers them.
const (
	// ModeRIBLT streams rateless IBLT symbols of 20-byte id prefixes
	// (riblt.SymbolSize, 24 bytes a symbol) and fetches by prefix; near
	// the lower bound in bytes for any difference the sketch can hold.
	// It is "riblt2" because the first version, "riblt", coded whole ids
	// in 36-byte symbols: a peer of either version does not offer or
	// accept the other's name, so the two meet in negentropy rather than
	// misread each other's symbols.
	ModeRIBLT = "riblt2"
	// ModeNegentropy is negentropy protocol V1 (NIP-77); any difference,
	// O(log n) round trips.
	ModeNegentropy = "negentropy"
)

// Frame bounds.
const (
	// MaxFetch bounds the facts one fetch or push may carry, and the ids
	// and prefixes one fetch may name.
	MaxFetch = 1000
	// MaxSymbols bounds the riblt symbols one request may ask for
	// (MaxSymbols × 24 bytes ≈ 393 KB).
	MaxSymbols = 1 << 14
	// MaxBatchBytes bounds the facts and tokens of one fetch reply or
	// push. The receiver publishes them into its INGRESS as one message,
	// which may not pass events.MaxIngressMessage (1 MiB, also NATS's
	// default max_payload); the rest is room for trace contexts and
	// headers. A batch holds fewer than the ids asked for when they would
	// not fit, and always at least one fact (a fact and its token are at
	// most 80 KiB).
	MaxBatchBytes = 768 << 10
	// MaxPushBytes bounds one push's encoded batch: what fits in INGRESS.
	MaxPushBytes = events.MaxIngressMessage
)

// OpenRequest opens a session on the authority in the subject.
type OpenRequest struct {
	// Modes the initiator speaks, most preferred first.
	Modes []string `json:"modes"`
	// FrameSizeLimit the initiator uses for negentropy messages; the
	// responder answers within the same limit. 0 means the default.
	FrameSizeLimit int `json:"frame_size_limit,omitempty"`
	// Floor is the initiator's settled cut (snapshots.go): it reconciles
	// only facts at or after it.
	Floor uint32 `json:"floor,omitempty"`
}

// OpenReply names the session and the mode the responder chose.
type OpenReply struct {
	Session string `json:"session"`
	Mode    string `json:"mode"`
	// RIBLTSymbols is how many symbols the responder's sketch keeps; an
	// initiator asks for no more.
	RIBLTSymbols int `json:"riblt_symbols,omitempty"`
	// RIBLTFingerprint is the fingerprint of the whole ids the symbols
	// code (riblt.Sketch.Fingerprint, 32 hex characters): the initiator
	// checks the facts behind the prefixes it decoded against it
	// (riblt.Decoder.Confirm), which catches two facts sharing a prefix.
	RIBLTFingerprint *riblt.Fingerprint `json:"riblt_fingerprint,omitempty"`
	// Count is how many facts of the authority the responder holds.
	Count int `json:"count"`
	// TimeoutMillis is how long the session lives without a request.
	TimeoutMillis int64 `json:"timeout_ms"`
	// Floor is the session's: the later of both peers' settled cuts. Both
	// reconcile only facts at or after it, with negentropy.
	Floor uint32 `json:"floor,omitempty"`
	// Snapshot is the responder's newest committed snapshot, which an
	// initiator that needs the history before Floor, or a new one,
	// restores from (snapshots.go).
	Snapshot *SnapshotOffer `json:"snapshot,omitempty"`
}

// SymbolsRequest asks for riblt symbols [From, From+Count).
type SymbolsRequest struct {
	Session string `json:"session"`
	From    int    `json:"from"`
	Count   int    `json:"count"`
}

// FetchRequest asks for facts by id (lowercase hex FactIDs, after
// negentropy) and by prefix (lowercase hex riblt prefixes, after riblt:
// every fact whose id starts with one), at most MaxFetch in all.
type FetchRequest struct {
	Session  string   `json:"session,omitempty"`
	IDs      []string `json:"ids,omitempty"`
	Prefixes []string `json:"prefixes,omitempty"`
}

// PushReply says how many pushed facts went to INGRESS.
type PushReply struct {
	Facts int `json:"facts"`
}

// EndRequest closes a session with the initiator's outcome.
type EndRequest struct {
	Session string `json:"session"`
	Outcome string `json:"outcome"`
}

// The control operations' types are the contract with the CLI and the
// SDK, so they live in events; these names keep the service's code
// reading as its protocol.
type (
	SyncRequest  = events.SyncRequest
	SyncReport   = events.SyncReport
	SyncReply    = events.SyncReply
	SessionState = events.SessionState
	PeerStatus   = events.PeerStatus
	Status       = events.SyncStatus
)

// The session states.
const (
	StateInitializing = events.SessionInitializing
	StateActive       = events.SessionActive
	StateCompleted    = events.SessionCompleted
	StateFailed       = events.SessionFailed
)
