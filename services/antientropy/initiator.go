package antientropy

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/antientropy/riblt"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// The initiator side of a session, run by this peer against a remote
// peer P for one authority A:
//
//  1. open, offering riblt then negentropy;
//  2. reconcile: riblt symbols until the difference decodes, or, if the
//     difference is larger than the sketch, negentropy rounds; either way
//     this peer learns need (facts only P has) and have (facts only it
//     has), by id prefix after riblt and by whole id after negentropy;
//  3. pull: fetch need in batches and publish each batch into local
//     INGRESS, where this peer's guard checks every fact;
//  4. push: send have in batches to P's push operation, which publishes
//     them into P's INGRESS, where P's guard checks them (a remote peer's
//     NATS user may not publish to INGRESS itself);
//  5. after riblt, confirm: the facts pulled and pushed must turn this
//     peer's set into P's, by P's fingerprint; if two facts shared a
//     prefix they do not, and steps 2 to 4 run again with negentropy;
//  6. end, with the outcome.

// remoteCall is one session's requests to a remote peer, through its guard.
type remoteCall struct {
	s       *Service
	peer    events.PeerID
	auth    events.AuthorityID
	cred    Credential
	session string
	rep     *SyncReport
}

// do sends one request and returns the reply body, or the remote's error
// with its reason.
func (c *remoteCall) do(ctx context.Context, op string, body []byte) ([]byte, error) {
	m := nats.NewMsg(events.PeerSubject(c.peer, Name, op))
	m.Data = body
	m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(c.cred.Token))
	m.Header.Set(events.HeaderAuthority, string(c.auth))
	m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(c.cred.AuthorityKey))
	events.SetProtocolVersion(m.Header)
	if c.session != "" {
		m.Header.Set(HeaderSession, c.session)
	}
	bus.InjectTrace(ctx, m.Header)
	rctx, cancel := context.WithTimeout(ctx, c.s.cfg.RequestTimeout)
	defer cancel()
	c.rep.BytesOut += len(body)
	reply, err := c.s.env.Conn.RequestMsgWithContext(rctx, m)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, events.Errorf(events.ReasonUnavailable, "peer %s does not answer %s: not connected to the mesh, or not running", c.peer, op)
	case err != nil:
		return nil, events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("%s to peer %s", op, c.peer))
	}
	c.rep.BytesIn += len(reply.Data)
	if reason := reply.Header.Get(events.HeaderReason); reason != "" {
		if e := events.DecodeError(reply.Data); e != nil {
			e.Detail = fmt.Sprintf("peer %s refused %s: %s", c.peer, op, e.Detail)
			return nil, e
		}
		return nil, events.Errorf(events.Reason(reason), "peer %s refused %s", c.peer, op)
	}
	return reply.Data, nil
}

// syncWith runs one session with peer on auth and reports it. The
// session's span is the parent of its requests; the facts it moves
// continue their own traces, linked to it (tracing.go).
func (s *Service) syncWith(ctx context.Context, peer events.PeerID, auth events.AuthorityID) (rep SyncReport) {
	start := s.env.Clock.Now()
	rep = SyncReport{Peer: peer, Authority: auth, State: StateInitializing, Started: start}
	ctx, span := s.tracer.Start(ctx, spanSession, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(events.AttrPeer.String(string(peer)), events.AttrAuthority.String(string(auth))))
	defer func() {
		rep.Duration = s.env.Clock.Now().Sub(start).String()
		s.metrics.session(ctx, &rep)
		endSession(span, &rep)
	}()
	cred, ok := s.creds[auth]
	if !ok {
		return failed(rep, events.Errorf(events.ReasonBadToken, "this peer holds no sync token for authority %s (add one to the credentials directory)", auth))
	}
	c := &remoteCall{s: s, peer: peer, auth: auth, cred: cred, rep: &rep}
	var open OpenReply
	for restored := false; ; restored = true {
		local, err := s.floor(ctx, auth)
		if err != nil {
			return failed(rep, err)
		}
		modes := []string{ModeNegentropy}
		if s.cfg.SketchSize > 0 && local.SettledCut == 0 {
			modes = []string{ModeRIBLT, ModeNegentropy}
		}
		body, _ := json.Marshal(OpenRequest{Modes: modes, FrameSizeLimit: s.cfg.FrameSizeLimit, Floor: local.SettledCut})
		raw, err := c.do(ctx, OpOpen, body)
		if err != nil {
			return failed(rep, err)
		}
		open = OpenReply{}
		if err := json.Unmarshal(raw, &open); err != nil {
			return failed(rep, events.Wrap(events.ReasonMalformed, err, "open reply"))
		}
		c.session, rep.Mode, rep.State = open.Session, open.Mode, StateActive
		if restored || !s.wantsSnapshot(s.set(auth, true), local, open) {
			break
		}
		// Restore from the peer's snapshot, then open again with the
		// floor the restore settled.
		end, _ := json.Marshal(EndRequest{Session: c.session, Outcome: string(StateCompleted)})
		_, _ = c.do(ctx, OpEnd, end)
		c.session = ""
		if err := s.bootstrap(ctx, c); err != nil {
			return failed(rep, err)
		}
	}

	err := s.exchange(ctx, c, open)
	outcome := StateCompleted
	if err != nil {
		outcome = StateFailed
	}
	end, _ := json.Marshal(EndRequest{Session: c.session, Outcome: string(outcome)})
	if _, endErr := c.do(ctx, OpEnd, end); err == nil && endErr != nil {
		s.log.Debug("antientropy: ending a completed session failed", "peer", peer, "err", endErr)
	}
	if err != nil {
		return failed(rep, err)
	}
	rep.State = StateCompleted
	return rep
}

// exchange reconciles, pulls and pushes within an open session.
func (s *Service) exchange(ctx context.Context, c *remoteCall, open OpenReply) error {
	set := s.set(c.auth, true)
	if open.Mode == ModeRIBLT && set.sketch != nil {
		err := s.exchangeRIBLT(ctx, c, set, open)
		switch events.ReasonOf(err) {
		case "":
			return nil
		case events.ReasonConflict:
			s.log.Warn("antientropy: the riblt difference did not confirm; reconciling with negentropy", "peer", c.peer, "authority", c.auth, "err", err)
		case events.ReasonTooLarge:
		default:
			return err
		}
		c.rep.Fallback, c.rep.Mode = true, ModeNegentropy
	}
	have, need, err := s.reconcileNegentropy(ctx, c, set, open.Floor)
	if err != nil {
		return err
	}
	c.rep.Lag = len(need)
	if _, err := s.pull(ctx, c, idRefs(need)); err != nil {
		return err
	}
	_, err = s.pushTo(ctx, c, idRefs(have))
	return err
}

// exchangeRIBLT decodes the difference's prefixes, pulls and pushes the
// facts behind them, and confirms they were the difference. It fails
// too_large when the difference needs more symbols than either side
// keeps, and conflict when the facts do not confirm.
func (s *Service) exchangeRIBLT(ctx context.Context, c *remoteCall, set *factSet, open OpenReply) error {
	if open.RIBLTFingerprint == nil {
		return events.Errorf(events.ReasonMalformed, "peer %s opened a %s session without a riblt_fingerprint", c.peer, ModeRIBLT)
	}
	dec, err := s.reconcileRIBLT(ctx, c, set, open.RIBLTSymbols)
	if err != nil {
		return err
	}
	c.rep.Lag = len(dec.Remote())
	fetched, err := s.pull(ctx, c, prefixRefs(dec.Remote()))
	if err != nil {
		return err
	}
	resolved, err := s.pushTo(ctx, c, prefixRefs(dec.Local()))
	if err != nil {
		return err
	}
	return dec.Confirm(*open.RIBLTFingerprint, fetched, resolved)
}

// reconcileRIBLT asks for symbols in the batches the decoder wants until
// the difference decodes. It fails too_large when the difference needs
// more symbols than either side keeps.
func (s *Service) reconcileRIBLT(ctx context.Context, c *remoteCall, set *factSet, remoteSize int) (*riblt.Decoder, error) {
	dec := riblt.NewDecoder(set.sketch.Clone())
	for n := dec.NextBatch(); n > 0; n = dec.NextBatch() {
		from := dec.Received()
		n = min(n, MaxSymbols, remoteSize-from)
		if n <= 0 {
			break
		}
		body, _ := json.Marshal(SymbolsRequest{Session: c.session, From: from, Count: n})
		raw, err := c.do(ctx, OpSymbols, body)
		if err != nil {
			return nil, err
		}
		c.rep.Rounds++
		if err := dec.AddSymbols(raw); err != nil {
			return nil, err
		}
	}
	if !dec.Done() {
		return nil, events.Errorf(events.ReasonTooLarge, "the difference with peer %s needs more riblt symbols than the sketches keep", c.peer)
	}
	return dec, nil
}

// reconcileNegentropy runs negentropy rounds from a copy of the local
// index, so facts arriving meanwhile neither block nor disturb it, over
// the facts at or after the session's floor.
func (s *Service) reconcileNegentropy(ctx context.Context, c *remoteCall, set *factSet, floor uint32) (have, need []events.FactID, err error) {
	local := set.index.Clone()
	local.View(func(st negentropy.Storage) {
		var in *negentropy.Initiator
		if in, err = negentropy.NewInitiator(restrict(st, floor), s.cfg.FrameSizeLimit); err != nil {
			return
		}
		var msg []byte
		for msg, err = in.Initiate(); err == nil && msg != nil; {
			var reply []byte
			if reply, err = c.do(ctx, OpReconcile, msg); err != nil {
				return
			}
			c.rep.Rounds++
			var h, n []events.FactID
			msg, h, n, err = in.Reconcile(reply)
			have, need = append(have, h...), append(need, n...)
		}
	})
	return have, need, err
}

// pull fetches need in batches, publishes each into local INGRESS and
// returns the ids of the facts pulled. Facts the peer sends that were not
// asked for are dropped; facts beyond the first under an asked prefix are
// taken and counted extra.
func (s *Service) pull(ctx context.Context, c *remoteCall, need []factRef) ([]events.FactID, error) {
	var pulled []events.FactID
	for len(need) > 0 {
		n := min(len(need), s.cfg.BatchSize)
		asking := need[:n]
		need = need[n:]
		req := FetchRequest{Session: c.session}
		byPrefix := make(map[riblt.Prefix][]int, n)
		for i, ref := range asking {
			if ref.whole {
				req.IDs = append(req.IDs, ref.id.String())
			} else {
				req.Prefixes = append(req.Prefixes, ref.prefix.String())
			}
			byPrefix[ref.prefix] = append(byPrefix[ref.prefix], i)
		}
		body, _ := json.Marshal(req)
		raw, err := c.do(ctx, OpFetch, body)
		if err != nil {
			return pulled, err
		}
		var batch eventsv1.FactBatch
		if err := proto.Unmarshal(raw, &batch); err != nil {
			return pulled, events.Wrap(events.ReasonMalformed, err, fmt.Sprintf("peer %s sent a fetch reply that is not a FactBatch", c.peer))
		}
		answered := make([]bool, n)
		got := map[events.FactID]bool{}
		var kept []*events.Fact
		var traces []*eventsv1.TraceContext
		for i, sf := range batch.Facts {
			f, err := events.FactFromProto(sf)
			if err != nil || got[f.ID] {
				continue
			}
			for _, j := range byPrefix[riblt.PrefixOf(f.ID)] {
				if !asking[j].matches(f.ID) {
					continue
				}
				if answered[j] {
					c.rep.Extra++
				}
				answered[j], got[f.ID] = true, true
				kept, traces = append(kept, f), append(traces, traceAt(&batch, i))
				break
			}
		}
		if len(kept) == 0 {
			continue
		}
		// A reply holds what fits in one batch; ask again for the rest.
		var rest []factRef
		for j, ref := range asking {
			if !answered[j] {
				rest = append(rest, ref)
			}
		}
		need = append(rest, need...)
		if err := s.ingest(ctx, c.peer, c.auth, kept, traces, batch.Tokens); err != nil {
			return pulled, err
		}
		c.rep.Pulled += len(kept)
		for _, f := range kept {
			pulled = append(pulled, f.ID)
		}
	}
	return pulled, nil
}

// pushTo sends the facts the peer lacks, in batches, to its push
// operation, and returns the ids of the facts pushed.
func (s *Service) pushTo(ctx context.Context, c *remoteCall, have []factRef) ([]events.FactID, error) {
	var pushed []events.FactID
	for len(have) > 0 {
		batch, err := s.batch(ctx, c.auth, have[:min(len(have), s.cfg.BatchSize)])
		if err != nil {
			return pushed, err
		}
		have = have[batch.served:]
		if len(batch.Facts) == 0 {
			continue // prefixes with no fact here: Confirm will say so
		}
		end := s.traceOutgoing(ctx, spanPush, c.peer, c.auth, batch.FactBatch, batch.stored)
		body, err := proto.Marshal(batch.FactBatch)
		if err != nil {
			err = events.Wrap(events.ReasonInternal, err, "encode fact batch")
		} else {
			_, err = c.do(ctx, OpPush, body)
		}
		end(err)
		if err != nil {
			return pushed, err
		}
		c.rep.Pushed += len(batch.Facts)
		c.rep.Extra += batch.extra
		for _, sf := range batch.stored {
			pushed = append(pushed, sf.fact.ID)
		}
	}
	return pushed, nil
}

// endSession records the session's report on its span and ends it.
func endSession(span trace.Span, rep *SyncReport) {
	span.SetAttributes(
		attribute.String("factsync.antientropy.state", string(rep.State)),
		attribute.String("factsync.antientropy.mode", rep.Mode),
		attribute.Bool("factsync.antientropy.fallback", rep.Fallback),
		attribute.Int("factsync.antientropy.rounds", rep.Rounds),
		attribute.Int("factsync.antientropy.lag", rep.Lag),
		attribute.Int("factsync.antientropy.pulled", rep.Pulled),
		attribute.Int("factsync.antientropy.pushed", rep.Pushed),
		attribute.Int("factsync.antientropy.extra", rep.Extra),
		attribute.Int("factsync.antientropy.bytes_out", rep.BytesOut),
		attribute.Int("factsync.antientropy.bytes_in", rep.BytesIn))
	if rep.State == StateFailed {
		span.SetAttributes(events.AttrReason.String(rep.Reason))
		span.SetStatus(codes.Error, rep.Error)
	}
	span.End()
}

func failed(rep SyncReport, err error) SyncReport {
	rep.State, rep.Error, rep.Reason = StateFailed, err.Error(), string(events.ReasonOf(err))
	return rep
}
