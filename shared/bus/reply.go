package bus

import (
	"encoding/json"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
)

// ErrorReply is the reply to a request that failed: the events.ErrorBody
// JSON, with the reason code also in the events.HeaderReason header so a
// caller can branch without decoding the body.
func ErrorReply(err error) *nats.Msg {
	m := &nats.Msg{Header: nats.Header{}, Data: events.EncodeError(err)}
	m.Header.Set(events.HeaderReason, string(events.ReasonOf(err)))
	return m
}

// Respond answers request m with reply as JSON, or with ErrorReply(err)
// when err is not nil. A request without a reply subject gets nothing. It
// returns the error of sending, which callers usually only log.
func Respond(m *nats.Msg, reply any, err error) error {
	if m.Reply == "" {
		return nil
	}
	out := &nats.Msg{}
	if err == nil {
		out.Data, err = json.Marshal(reply)
		if err != nil {
			err = events.Wrap(events.ReasonInternal, err, "encode the reply")
		}
	}
	if err != nil {
		out = ErrorReply(err)
	}
	out.Subject = m.Reply
	return m.RespondMsg(out)
}
