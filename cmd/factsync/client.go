package main

import (
	"context"
	"errors"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
)

// requestTimeout bounds one request from a client command.
const requestTimeout = 10 * time.Second

// connectClient connects to the stack a context names, as its client user.
func connectClient(ctx context.Context, sc stackContext) (*nats.Conn, error) {
	nc, err := bus.Connect(ctx, sc.NATSURL, bus.ConnectOptions{Name: "factsync-cli", Extra: []nats.Option{nats.MaxReconnects(0)}})
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "connect to the stack at "+redactURL(sc.NATSURL)+" (is 'factsync dev' running?)")
	}
	return nc, nil
}

// request sends one request and turns an error reply into its *events.Error.
func request(ctx context.Context, nc *nats.Conn, subject string, body []byte, header nats.Header) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	msg := &nats.Msg{Subject: subject, Data: body, Header: header}
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	bus.InjectTrace(ctx, msg.Header)
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, events.Errorf(events.ReasonUnavailable, "no service answers %s: is the guard running?", subject)
	case err != nil:
		return nil, events.Wrap(events.ReasonUnavailable, err, "request "+subject)
	}
	if reply.Header.Get(events.HeaderReason) != "" {
		if e := events.DecodeError(reply.Data); e != nil {
			return nil, e
		}
		return nil, events.Errorf(events.Reason(reply.Header.Get(events.HeaderReason)), "%s", reply.Data)
	}
	return reply.Data, nil
}
