package events

// Request headers the guard reads on fronted requests (see api.go for the
// common ones).
const (
	// HeaderAuthorityKey carries the authority public key, lowercase hex.
	// It must hash to the request's authority; the token must be rooted
	// at it.
	HeaderAuthorityKey = "Fs-Authority-Key"
	// HeaderAuthority names the authority a peer request concerns (peer
	// subjects carry no authority of their own).
	HeaderAuthority = "Fs-Authority"
)

// The guard's own request protocol, answered by the guard itself rather
// than forwarded: APISubject(GuardProto, OpRevoke, auth) with a JSON
// capability.Revocation body signed by the authority key.
const (
	GuardProto = "guard"
	OpRevoke   = "revoke"
)

// RevocationBucket is the guard's KV bucket of revoked token ids, keyed
// "<authority>.<revocation id hex>". Only the guard writes it (the NATS
// permissions in shared/natsauth deny it to everyone else).
const RevocationBucket = "guard_revocations"

// PrunedFloorBucket is the guard's KV bucket of prune cuts, keyed by
// authority: the cut each authority's JOURNAL was pruned to on this peer,
// below which the guard refuses facts that what JOURNAL holds supersedes
// (ReasonPruned). Only the guard writes it (shared/natsauth), as a
// service that could would make the guard refuse facts.
const PrunedFloorBucket = "guard_pruned"
