package guard

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
	"github.com/factsync/factsync/shared/capability"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// maxConcurrentRequests bounds the client requests, and separately the peer
// requests, the guard forwards at once; a request beyond it is answered
// rate_limited.
const maxConcurrentRequests = 256

// RequestRight returns the right a request must hold: read on the body's
// "collection" for the journal's queries, sync on the whole authority for
// anti-entropy, snapshot for snapshots, ota:propose and ota:approve for the
// OTA ceremony, read on the whole authority for receipts. A protocol not
// listed here is refused: the guard forwards only what it can check.
func RequestRight(proto, op string, body []byte) (capability.Right, error) {
	whole := func(o capability.Op) (capability.Right, error) {
		return capability.Right{Collection: capability.AnyCollection, Op: o}, nil
	}
	switch proto {
	case events.JournalProto:
		if op != events.OpGet && op != events.OpQuery && op != events.OpCount {
			return capability.Right{}, events.Errorf(events.ReasonNotFound, "the journal has no operation %q (get, query, count)", op)
		}
		var req struct {
			Collection *string `json:"collection"`
		}
		if len(body) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				return capability.Right{}, events.Wrap(events.ReasonMalformed, err, "request body is not a JSON object")
			}
		}
		if req.Collection == nil {
			return whole(capability.OpRead)
		}
		if err := events.CheckName("collection", *req.Collection); err != nil {
			return capability.Right{}, err
		}
		return capability.Right{Collection: *req.Collection, Op: capability.OpRead}, nil
	case "antientropy":
		return whole(capability.OpSync)
	case "snapshot":
		return whole(capability.OpSnapshot)
	case events.OTAProto:
		// The OTA contract names each operation's right; an operation it
		// does not name is refused rather than given a default.
		right, ok := events.OTARights[op]
		if !ok {
			return capability.Right{}, events.Errorf(events.ReasonNotFound, "the ota protocol has no operation %q", op)
		}
		return whole(capability.Op(right))
	case "receipts":
		return whole(capability.OpRead)
	}
	return capability.Right{}, events.Errorf(events.ReasonNotFound, "the guard fronts no protocol %q", proto)
}

// serveRequests subscribes to the client API and this peer's peer subjects
// in queue group "guard", so guard replicas share them.
func (g *running) serveRequests(ctx context.Context) ([]*nats.Subscription, error) {
	// Client and peer requests have a pool each, so peers that hang their
	// sessions cannot starve the clients, nor the other way round. A full
	// pool sheds the request at once with a reason: waiting in the NATS
	// handler would stall every request behind it.
	handle := func(peer bool) nats.MsgHandler {
		pool := make(chan struct{}, maxConcurrentRequests)
		return func(m *nats.Msg) {
			if m.Reply != "" {
				if err := events.CheckReplySubject(m.Reply); err != nil {
					// Not answered, not even with the reason: an answer
					// is exactly the publish the requester is after.
					g.log.Warn("dropped a request whose reply subject is not an inbox", "subject", m.Subject, "err", err)
					g.metrics.record(context.Background(), "request", 0, []events.Reason{events.ReasonOf(err)}, 0)
					return
				}
			}
			if !g.startRequest() {
				g.reply(m, nil, events.Errorf(events.ReasonUnavailable, "the guard is shutting down"))
				return
			}
			select {
			case pool <- struct{}{}:
			default:
				g.requests.Done()
				g.reply(m, nil, events.Errorf(events.ReasonRateLimited, "the guard has %d requests in flight; retry shortly", maxConcurrentRequests))
				return
			}
			go func() {
				defer func() { <-pool; g.requests.Done() }()
				g.serveRequest(ctx, m, peer)
			}()
		}
	}
	api, err := g.env.Conn.QueueSubscribe(events.APIPrefix+".>", Name, handle(false))
	if err != nil {
		return nil, err
	}
	subs := []*nats.Subscription{api}
	if g.env.Peer != "" {
		peer, err := g.env.Conn.QueueSubscribe(events.PeerPrefix+"."+string(g.env.Peer)+".>", Name, handle(true))
		if err != nil {
			_ = api.Unsubscribe()
			return nil, err
		}
		subs = append(subs, peer)
	}
	return subs, nil
}

// startRequest counts a request in, unless the guard is stopping.
func (g *running) startRequest() bool {
	g.requestsMu.Lock()
	defer g.requestsMu.Unlock()
	if g.requestsClosed {
		return false
	}
	g.requests.Add(1)
	return true
}

// stopRequests refuses new requests and waits for those in flight.
func (g *running) stopRequests() {
	g.requestsMu.Lock()
	g.requestsClosed = true
	g.requestsMu.Unlock()
	g.requests.Wait()
}

// serveRequest checks one request and forwards it, or answers with the
// reason it was refused. Every request gets a reply.
func (g *running) serveRequest(ctx context.Context, m *nats.Msg, peer bool) {
	start := g.env.Clock.Now()
	ctx, span := g.tracer.Start(bus.ExtractTrace(ctx, m.Header), "guard.request",
		trace.WithAttributes(attribute.String("messaging.destination.name", m.Subject)))
	defer span.End()
	reply, err := g.forward(ctx, m, peer)
	var denied []events.Reason
	if err != nil {
		denied = []events.Reason{events.ReasonOf(err)}
		span.SetAttributes(attribute.String("factsync.reason", string(denied[0])))
	}
	g.metrics.record(ctx, "request", 1-len(denied), denied, g.env.Clock.Now().Sub(start))
	g.reply(m, reply, err)
}

// reply answers m with reply, or with err as an error reply.
func (g *running) reply(m *nats.Msg, reply *nats.Msg, err error) {
	if m.Reply == "" {
		return
	}
	if err != nil {
		reply = bus.ErrorReply(err)
	}
	reply.Subject = m.Reply
	reply.Reply = ""
	if err := g.env.Conn.PublishMsg(reply); err != nil {
		g.log.Warn("cannot reply to request", "subject", m.Subject, "err", err)
	}
}

// forward runs the request chain (address, token, right, policy) and
// relays the service's reply.
func (g *running) forward(ctx context.Context, m *nats.Msg, peer bool) (*nats.Msg, error) {
	now := g.env.Clock.Now()
	var (
		addr events.RequestAddress
		err  error
	)
	if peer {
		addr, err = events.ParsePeerSubject(m.Subject)
		if err == nil {
			addr.Authority = events.AuthorityID(m.Header.Get(events.HeaderAuthority))
			err = addr.Authority.Validate()
		}
		// A peer below the protocol version in force speaks a sync
		// protocol this peer has left behind (an OTA hard fork). OTA
		// itself is not a sync protocol and stays open to it: a peer left
		// behind must still learn of the release and fetch it to catch up.
		if err == nil && addr.Proto != events.OTAProto {
			err = g.protocol.AdmitHeader(m.Header)
		}
	} else {
		addr, err = events.ParseAPISubject(events.APIPrefix, m.Subject)
	}
	if err != nil {
		return nil, err
	}
	if peer && clientOnly(addr) {
		return nil, events.Errorf(events.ReasonNoRight, "%s %s changes this peer's own configuration; only its clients may ask (%s)", addr.Proto, addr.Op, events.APIPrefix)
	}
	if !peer && addr.Proto == events.GuardProto && addr.Op == events.OpRevoke {
		body, err := g.revoke(ctx, addr.Authority, m.Data)
		if err != nil {
			return nil, err
		}
		return &nats.Msg{Data: body}, nil
	}
	right, err := RequestRight(addr.Proto, addr.Op, m.Data)
	if err != nil {
		return nil, err
	}
	device, err := g.authorize(ctx, m, addr, right, now)
	if events.ReasonOf(err) == events.ReasonNoRight {
		if alt, ok := alternateRight(addr.Proto, addr.Op); ok {
			device, err = g.authorize(ctx, m, addr, alt, now)
		}
	}
	if err != nil {
		return nil, err
	}

	fwd := nats.NewMsg(events.ServiceSubject(addr.Proto, addr.Op, addr.Authority))
	for k, v := range m.Header {
		fwd.Header[k] = v
	}
	fwd.Header.Set(events.HeaderDevice, string(device))
	bus.InjectTrace(ctx, fwd.Header)
	fwd.Data = m.Data
	timeout := g.cfg.RequestTimeout
	if events.LongRequest(addr.Proto, addr.Op) {
		timeout = g.cfg.LongRequestTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := g.env.Conn.RequestMsgWithContext(rctx, fwd)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, events.Errorf(events.ReasonUnavailable, "no %s service answers %s", addr.Proto, fwd.Subject)
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		// The service goes on with work it has started; say so, so the
		// caller looks before doing it again.
		look := "check its state"
		if cmd := events.StateCommand(addr.Proto); cmd != "" {
			look += " (" + cmd + ")"
		}
		return nil, events.Errorf(events.ReasonUnavailable, "the %s service did not answer %s %s within %s; what it started goes on without this request: %s before retrying",
			addr.Proto, addr.Op, addr.Authority, timeout, look)
	case err != nil:
		return nil, events.Wrap(events.ReasonUnavailable, err, "forward to "+fwd.Subject)
	}
	return &nats.Msg{Header: reply.Header, Data: reply.Data}, nil
}

// clientOnly reports whether a request may come only from this peer's
// clients, never from another peer: adding a static peer changes whom
// this peer presents its sync tokens to, which no remote peer should
// choose.
func clientOnly(addr events.RequestAddress) bool {
	return addr.Proto == events.AntiEntropyProto && addr.Op == events.AntiEntropyOpAddPeer
}

// alternateRight is a second right that also allows a request. Listing
// and fetching an authority's committed snapshots reveal nothing a sync
// session would not (the snapshot holds facts and their fold), so a peer
// with `sync` may bootstrap from a snapshot instead of replaying every fact.
func alternateRight(proto, op string) (capability.Right, bool) {
	if proto == events.SnapshotProto && (op == events.SnapshotOpList || op == events.SnapshotOpFetch) {
		return capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync}, true
	}
	return capability.Right{}, false
}

// authorize checks that the request's token, rooted at the authority key
// in its headers, grants right, and that the policy allows the request. It
// returns the device the token names.
func (g *running) authorize(ctx context.Context, m *nats.Msg, addr events.RequestAddress, right capability.Right, now time.Time) (events.DeviceID, error) {
	authKey, err := authorityKey(m.Header, addr.Authority)
	if err != nil {
		return "", err
	}
	token, err := base64.StdEncoding.DecodeString(m.Header.Get(events.HeaderToken))
	if err != nil || len(token) == 0 {
		return "", events.Errorf(events.ReasonBadToken, "request carries no base64 token in header %s", events.HeaderToken)
	}
	grant, err := g.verifier.Verify(token, capability.Request{Authority: authKey, Right: right, Now: now})
	if err != nil {
		return "", err
	}
	device := events.DeviceIDOf(grant.Device)
	in := PolicyInput{
		Kind:       "request",
		Subject:    m.Subject,
		Authority:  addr.Authority,
		Device:     device,
		Collection: right.Collection,
		Op:         string(right.Op),
		Proto:      addr.Proto,
		RequestOp:  addr.Op,
		Size:       len(m.Data),
		NowMillis:  now.UnixMilli(),
	}
	if err := g.policy.current.Load().Decide(ctx, &in); err != nil {
		return "", err
	}
	return device, nil
}

// authorityKey reads the authority public key from the request and checks
// that it is the key of auth.
func authorityKey(h nats.Header, auth events.AuthorityID) (ed25519.PublicKey, error) {
	key, err := hex.DecodeString(h.Get(events.HeaderAuthorityKey))
	if err != nil || len(key) != ed25519.PublicKeySize {
		return nil, events.Errorf(events.ReasonBadToken, "request needs the authority public key, hex, in header %s", events.HeaderAuthorityKey)
	}
	if events.AuthorityIDOf(key) != auth {
		return nil, events.Errorf(events.ReasonBadToken, "header %s is the key of authority %s, not %s", events.HeaderAuthorityKey, events.AuthorityIDOf(key), auth)
	}
	return key, nil
}
