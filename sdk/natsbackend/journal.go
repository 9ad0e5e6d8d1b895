package natsbackend

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
)

// request sends a journal request through the guard and decodes the reply
// into reply. An error reply becomes the server's *events.Error.
func (b *Backend) request(ctx context.Context, op string, req, reply any) error {
	return b.call(ctx, events.JournalProto, op, req, reply)
}

// call sends request op of protocol proto about the backend's authority
// through the guard, with the device's token, and decodes the reply into
// reply. Without a deadline on ctx it waits RequestTimeout.
func (b *Backend) call(ctx context.Context, proto, op string, req, reply any) error {
	nc, signer, err := b.live()
	if err != nil {
		return err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return events.Wrap(events.ReasonMalformed, err, "encode "+proto+" "+op+" request")
	}
	msg := nats.NewMsg(events.APISubject(proto, op, signer.Authority()))
	msg.Data = body
	b.mu.RLock()
	for k, v := range b.headers {
		msg.Header[k] = v
	}
	b.mu.RUnlock()
	bus.InjectTrace(ctx, msg.Header)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.opts.RequestTimeout)
		defer cancel()
	}
	resp, err := nc.RequestMsgWithContext(ctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return events.Errorf(events.ReasonUnavailable, "%s %s: nobody answers %s (is factsync running with its guard?)", proto, op, msg.Subject)
	case err != nil:
		return events.Wrap(events.ReasonUnavailable, err, proto+" "+op)
	}
	if e := replyError(resp); e != nil {
		return e
	}
	if err := json.Unmarshal(resp.Data, reply); err != nil {
		return events.Wrap(events.ReasonInternal, err, "decode "+proto+" "+op+" reply")
	}
	return nil
}

// replyError returns the error an error reply carries, or nil.
func replyError(m *nats.Msg) *events.Error {
	e := events.DecodeError(m.Data)
	reason := events.Reason(m.Header.Get(events.HeaderReason))
	switch {
	case e != nil:
		return e
	case reason != "":
		return events.Errorf(reason, "%s", string(m.Data))
	}
	return nil
}
