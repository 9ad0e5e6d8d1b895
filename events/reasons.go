package events

import (
	"errors"
	"fmt"
)

// Reason is a stable, machine-readable code for why something was refused.
// Reason codes appear in the DENIED stream, in error replies, in CLI output
// and as metric labels, so they never change once published.
type Reason string

// The reason codes. Add new ones at the end; never rename one.
const (
	ReasonMalformed       Reason = "malformed"        // bytes do not decode, or a field is out of shape
	ReasonTooLarge        Reason = "too_large"        // over a size limit
	ReasonSchemaVersion   Reason = "schema_version"   // a schema version this peer does not know
	ReasonBadSignature    Reason = "bad_signature"    // signature does not verify
	ReasonBadToken        Reason = "bad_token"        // token missing, undecodable, or not rooted at the authority
	ReasonWrongDevice     Reason = "wrong_device"     // token does not name the signing device
	ReasonNoRight         Reason = "no_right"         // token does not grant the operation
	ReasonTokenExpired    Reason = "token_expired"    // token's expiry has passed
	ReasonTokenRevoked    Reason = "token_revoked"    // one of the token's revocation ids is revoked
	ReasonClockSkew       Reason = "clock_skew"       // HLC too far in the future
	ReasonPolicyDenied    Reason = "policy_denied"    // OPA policy said no
	ReasonRateLimited     Reason = "rate_limited"     // over a rate limit
	ReasonProtocolVersion Reason = "protocol_version" // peer below the active protocol version
	ReasonNotFound        Reason = "not_found"        // the named thing does not exist
	ReasonBadQuery        Reason = "bad_query"        // a query does not parse or type-check
	ReasonUnavailable     Reason = "unavailable"      // a dependency is down; retry later
	ReasonInternal        Reason = "internal"         // a bug or an unexpected failure
	ReasonConflict        Reason = "conflict"         // a compare-and-set or fence lost
	ReasonBadProof        Reason = "bad_proof"        // a Merkle proof or checkpoint does not verify
	ReasonUnsupported     Reason = "unsupported"      // the server or backend does not provide this operation
	ReasonRollback        Reason = "rollback"         // a version not above the one already trusted or in force
	ReasonExpired         Reason = "expired"          // signed metadata past its expiry, or a step past its deadline
	ReasonTampered        Reason = "tampered"         // content does not match the hash or state its signed manifest names
	ReasonBelowThreshold  Reason = "below_threshold"  // fewer distinct valid approvals than the threshold
	ReasonNotConfigured   Reason = "not_configured"   // this peer lacks the configuration the operation needs (e.g. no OTA release policy)
	ReasonPruned          Reason = "pruned"           // a fact this peer pruned (before its prune cut, superseded there) arriving again
)

// Error is an error with a stable reason code and a human sentence.
type Error struct {
	Reason Reason
	Detail string
	Err    error // optional cause
}

// Errorf builds an *Error with a formatted detail.
func Errorf(reason Reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Wrap builds an *Error that keeps err as its cause.
func Wrap(reason Reason, err error, detail string) *Error {
	return &Error{Reason: reason, Detail: detail, Err: err}
}

func (e *Error) Error() string {
	msg := string(e.Reason) + ": " + e.Detail
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the reason code carried by err, or ReasonInternal when
// err carries none. It returns "" for a nil error.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInternal
}

// IsReason reports whether err carries reason r.
func IsReason(err error, r Reason) bool { return err != nil && ReasonOf(err) == r }

func asError(err error, target **Error) bool { return errors.As(err, target) }
