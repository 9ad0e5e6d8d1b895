package events

import (
	"encoding/json"
	"time"
)

// Request and reply conventions shared by every request/reply protocol
// (fs.api.*, fs.svc.*, fs.peer.*). Bodies are JSON, described per protocol;
// the headers below are common to all of them.
const (
	// HeaderToken carries the caller's Biscuit token, base64 (std) encoded.
	HeaderToken = "Fs-Token"
	// HeaderReason is set on every error reply to its reason code, so a
	// caller can branch without decoding the body.
	HeaderReason = "Fs-Reason"
	// HeaderDevice carries the DeviceID the guard verified for a forwarded
	// request.
	HeaderDevice = "Fs-Device"
	// HeaderTraceParent is the W3C trace context header.
	HeaderTraceParent = "traceparent"
	// HeaderMsgID is JetStream's deduplication header.
	HeaderMsgID = "Nats-Msg-Id"
)

// ErrorBody is the JSON body of every error reply.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail names the reason code and says what went wrong.
type ErrorDetail struct {
	Reason Reason `json:"reason"`
	Detail string `json:"detail"`
}

// EncodeError renders err as an ErrorBody.
func EncodeError(err error) []byte {
	detail := err.Error()
	var e *Error
	if asError(err, &e) {
		detail = e.Detail
		if e.Err != nil {
			detail += ": " + e.Err.Error()
		}
	}
	b, _ := json.Marshal(ErrorBody{Error: ErrorDetail{Reason: ReasonOf(err), Detail: detail}})
	return b
}

// DecodeError returns the *Error in an error reply body, or nil when body is
// not an error reply.
func DecodeError(body []byte) *Error {
	var eb ErrorBody
	if json.Unmarshal(body, &eb) != nil || eb.Error.Reason == "" {
		return nil
	}
	return &Error{Reason: eb.Error.Reason, Detail: eb.Error.Detail}
}

// LongRequestTimeout is how long the guard forwards, and a client or peer
// waits for, a request whose work grows with the authority's history or
// with a peer's difference (LongRequest), instead of the 10 s other
// requests get: a snapshot's create, approve and prune each read the
// authority's whole JOURNAL, and a sync lasts as long as its sessions
// (a bootstrap from a snapshot included). The service finishes such work
// even when nobody waits for it any more.
const LongRequestTimeout = 15 * time.Minute

// LongRequest reports whether op of proto is a request that
// LongRequestTimeout bounds.
func LongRequest(proto, op string) bool {
	switch proto {
	case SnapshotProto:
		return op == SnapshotOpCreate || op == SnapshotOpApprove || op == SnapshotOpPrune
	case AntiEntropyProto:
		return op == AntiEntropyOpSync
	}
	return false
}

// StateCommand is the CLI command that shows what a protocol's service is
// doing, for a caller told that a request goes on without it; "" when the
// CLI has none.
func StateCommand(proto string) string {
	switch proto {
	case AntiEntropyProto:
		return "factsync sync status"
	case SnapshotProto:
		return "factsync snapshot list"
	case OTAProto:
		return "factsync ota status"
	}
	return ""
}
