package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/keys"
	"github.com/nats-io/nats.go"
)

// requestTimeout bounds one request from a client command.
const requestTimeout = 10 * time.Second

// connectClient connects to the stack a context names, as its client user.
func connectClient(ctx context.Context, sc stackContext) (*nats.Conn, error) {
	opts := []nats.Option{nats.MaxReconnects(0)}
	if sc.NATSInboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(sc.NATSInboxPrefix))
	}
	nc, err := bus.Connect(ctx, sc.NATSURL, bus.ConnectOptions{Name: "factsync-cli", Extra: opts})
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "connect to the stack at "+redactURL(sc.NATSURL)+" (is 'factsync dev' running?)")
	}
	return nc, nil
}

// request sends one request and turns an error reply into its *events.Error.
func request(ctx context.Context, nc *nats.Conn, subject string, body []byte, header nats.Header) ([]byte, error) {
	return requestWithin(ctx, nc, subject, body, header, requestTimeout)
}

// requestWithin is request with its own timeout.
func requestWithin(ctx context.Context, nc *nats.Conn, subject string, body []byte, header nats.Header, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
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

// apiClient makes guard-fronted API requests as the context's device.
type apiClient struct {
	nc        *nats.Conn
	authority events.AuthorityID
	header    nats.Header
}

// openAPI connects to the stack the context names and prepares the token
// and authority headers every API request carries.
func openAPI(ctx context.Context, g *globals) (*apiClient, stackContext, error) {
	sc, err := readContext(g.contextFile)
	if err != nil {
		return nil, sc, err
	}
	auth, err := keys.LoadPublic(sc.AuthorityKey, keys.Authority)
	if err != nil {
		return nil, sc, events.Wrap(events.ReasonMalformed, err, "authority key named by the context")
	}
	token, err := readToken(sc.Token)
	if err != nil {
		return nil, sc, err
	}
	nc, err := connectClient(ctx, sc)
	if err != nil {
		return nil, sc, err
	}
	return newAPIClient(nc, auth, token), sc, nil
}

// newAPIClient makes API requests on nc under token, for the authority
// whose public key is auth.
func newAPIClient(nc *nats.Conn, auth ed25519.PublicKey, token []byte) *apiClient {
	h := nats.Header{}
	h.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(token))
	h.Set(events.HeaderAuthorityKey, hex.EncodeToString(auth))
	return &apiClient{nc: nc, authority: events.AuthorityIDOf(auth), header: h}
}

func (c *apiClient) Close() { c.nc.Close() }

// call sends req as JSON to fs.api.<proto>.<op>.<authority> and decodes
// the reply into reply (when not nil). It returns the raw reply too.
func (c *apiClient) call(ctx context.Context, proto, op string, req, reply any) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	h := nats.Header{}
	for k, v := range c.header {
		h[k] = v
	}
	timeout := requestTimeout
	if events.LongRequest(proto, op) {
		// Longer than the guard waits, so its answer (the result, or why
		// there is none yet) arrives first.
		timeout = events.LongRequestTimeout + requestTimeout
	}
	raw, err := requestWithin(ctx, c.nc, events.APISubject(proto, op, c.authority), body, h, timeout)
	if err != nil {
		return nil, err
	}
	if reply != nil {
		if err := json.Unmarshal(raw, reply); err != nil {
			return raw, events.Wrap(events.ReasonMalformed, err, "decode the "+proto+" "+op+" reply")
		}
	}
	return raw, nil
}
