package events

import (
	"encoding/json"
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
