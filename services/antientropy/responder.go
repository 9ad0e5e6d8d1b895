package antientropy

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/antientropy/riblt"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// session is one responder session: what open fixed for the requests
// that follow.
type session struct {
	id     string
	auth   events.AuthorityID
	device string // the requester the guard verified (Fs-Device)
	mode   string
	frame  int
	// floor is the session's settled cut: it reconciles, and takes pushed
	// facts, only at or after it.
	floor uint32
	// sketch is the authority's riblt sketch frozen at open, so every
	// symbol of the session codes the same set.
	sketch  *riblt.Sketch
	expires time.Time
}

// sessions is the responder's table of open sessions, bounded in number
// and expired on the injected clock.
type sessions struct {
	clk     clock.Clock
	max     int
	timeout time.Duration

	mu   sync.Mutex
	open map[string]*session
}

func newSessions(clk clock.Clock, limit int, timeout time.Duration) *sessions {
	return &sessions{clk: clk, max: limit, timeout: timeout, open: map[string]*session{}}
}

// add opens a session, unless max are open already.
func (t *sessions) add(s *session) error {
	now := t.clk.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(now)
	if len(t.open) >= t.max {
		return events.Errorf(events.ReasonRateLimited, "this peer has %d sync sessions open, its limit; retry shortly", t.max)
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	s.id = hex.EncodeToString(id[:])
	s.expires = now.Add(t.timeout)
	t.open[s.id] = s
	return nil
}

// get returns the open session id of auth held by device and extends it.
func (t *sessions) get(id string, auth events.AuthorityID, device string) (*session, error) {
	now := t.clk.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(now)
	s := t.open[id]
	if s == nil || s.auth != auth || s.device != device {
		return nil, events.Errorf(events.ReasonNotFound, "no open sync session %q of this authority and device (it may have timed out after %s); open a new one", id, t.timeout)
	}
	s.expires = now.Add(t.timeout)
	return s, nil
}

// end closes a session.
func (t *sessions) end(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.open, id)
}

// count returns how many sessions are open.
func (t *sessions) count() int {
	now := t.clk.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(now)
	return len(t.open)
}

func (t *sessions) sweep(now time.Time) {
	for id, s := range t.open {
		if now.After(s.expires) {
			delete(t.open, id)
		}
	}
}

// maxInflight bounds the requests handled at once; more are shed with
// rate_limited rather than queued in the NATS handler.
const maxInflight = 64

// serve returns the handler of every operation.
func (s *Service) serve(ctx context.Context) nats.MsgHandler {
	inflight := make(chan struct{}, maxInflight)
	return func(m *nats.Msg) {
		select {
		case inflight <- struct{}{}:
		default:
			_ = m.RespondMsg(bus.ErrorReply(events.Errorf(events.ReasonRateLimited, "the antientropy service has %d requests in flight; retry shortly", maxInflight)))
			return
		}
		go func() {
			defer func() { <-inflight }()
			reply, err := s.handle(bus.ExtractTrace(ctx, m.Header), m)
			if err != nil {
				_ = m.RespondMsg(bus.ErrorReply(err))
				return
			}
			_ = m.Respond(reply)
		}()
	}
}

// handle answers one request.
func (s *Service) handle(ctx context.Context, m *nats.Msg) ([]byte, error) {
	addr, err := events.ParseAPISubject(events.ServicePrefix, m.Subject)
	if err != nil {
		return nil, err
	}
	device := m.Header.Get(events.HeaderDevice)
	if !s.limits.allow(device) {
		return nil, events.Errorf(events.ReasonRateLimited, "too many sync requests from device %s; slow down", device)
	}
	auth := addr.Authority
	sess := func(id string) (*session, error) { return s.sessions.get(id, auth, device) }
	switch addr.Op {
	case OpOpen:
		return s.open(ctx, auth, device, m.Data)
	case OpReconcile:
		se, err := sess(m.Header.Get(HeaderSession))
		if err != nil {
			return nil, err
		}
		return s.reconcile(se, m.Data)
	case OpSymbols:
		var req SymbolsRequest
		if err := decodeJSON(m.Data, &req); err != nil {
			return nil, err
		}
		se, err := sess(req.Session)
		if err != nil {
			return nil, err
		}
		return symbols(se, req)
	case OpFetch:
		var req FetchRequest
		if err := decodeJSON(m.Data, &req); err != nil {
			return nil, err
		}
		if _, err := sess(req.Session); err != nil {
			return nil, err
		}
		return s.fetch(ctx, events.PeerID(device), auth, req)
	case OpPush:
		se, err := sess(m.Header.Get(HeaderSession))
		if err != nil {
			return nil, err
		}
		return s.push(ctx, events.PeerID(device), auth, se.floor, m.Data)
	case OpEnd:
		var req EndRequest
		if err := decodeJSON(m.Data, &req); err != nil {
			return nil, err
		}
		if _, err := sess(req.Session); err != nil {
			return nil, err
		}
		s.sessions.end(req.Session)
		return []byte("{}"), nil
	case OpSync:
		var req SyncRequest
		if len(m.Data) > 0 {
			if err := decodeJSON(m.Data, &req); err != nil {
				return nil, err
			}
		}
		return json.Marshal(SyncReply{Sessions: s.peers.syncNow(ctx, auth, req.Peer)})
	case OpStatus:
		return json.Marshal(s.status(auth))
	case events.AntiEntropyOpAddPeer:
		return s.peers.addPeer(ctx, device, m.Data)
	}
	return nil, events.Errorf(events.ReasonNotFound, "the antientropy service has no operation %q", addr.Op)
}

func decodeJSON(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return events.Wrap(events.ReasonMalformed, err, "request body")
	}
	return nil
}

// open starts a session in the first mode of the request this peer
// speaks.
func (s *Service) open(ctx context.Context, auth events.AuthorityID, device string, body []byte) ([]byte, error) {
	var req OpenRequest
	if err := decodeJSON(body, &req); err != nil {
		return nil, err
	}
	own, err := s.floor(ctx, auth)
	if err != nil {
		return nil, err
	}
	se := &session{auth: auth, device: device, frame: s.cfg.FrameSizeLimit, floor: max(req.Floor, own.SettledCut)}
	if req.FrameSizeLimit > 0 {
		if req.FrameSizeLimit < 4096 {
			return nil, events.Errorf(events.ReasonMalformed, "frame_size_limit %d is below negentropy's minimum of 4096", req.FrameSizeLimit)
		}
		se.frame = min(se.frame, req.FrameSizeLimit)
	}
	for _, mode := range req.Modes {
		// A sketch codes the whole set; a session with a floor
		// reconciles only the range after it.
		if mode == ModeNegentropy || mode == ModeRIBLT && s.cfg.SketchSize > 0 && se.floor == 0 {
			se.mode = mode
			break
		}
	}
	if se.mode == "" {
		return nil, events.Errorf(events.ReasonUnsupported, "this peer reconciles with %s and %s, not %v", ModeRIBLT, ModeNegentropy, req.Modes)
	}
	set := s.set(auth, false)
	count := 0
	if set != nil {
		count = set.index.Len()
	}
	if se.mode == ModeRIBLT {
		if set != nil {
			se.sketch = set.sketch.Clone()
		} else {
			se.sketch = riblt.NewSketch(s.cfg.SketchSize)
		}
	}
	if err := s.sessions.add(se); err != nil {
		return nil, err
	}
	reply := OpenReply{Session: se.id, Mode: se.mode, Count: count, TimeoutMillis: s.cfg.SessionTimeout.Milliseconds(),
		Floor: se.floor, Snapshot: offerOf(own)}
	if se.sketch != nil {
		fp := se.sketch.Fingerprint()
		reply.RIBLTSymbols, reply.RIBLTFingerprint = se.sketch.Size(), &fp
	}
	return json.Marshal(reply)
}

// reconcile answers one negentropy message against a consistent view of
// the authority's set. An authority this peer has no facts of is an empty
// set, not an error: the requester learns it should push everything.
// Negentropy keeps no state between messages, so any session mode may
// fall back to it.
func (s *Service) reconcile(se *session, msg []byte) ([]byte, error) {
	var empty negentropy.Index
	index := &empty
	if set := s.set(se.auth, false); set != nil {
		index = &set.index
	}
	var reply []byte
	var err error
	index.View(func(st negentropy.Storage) {
		var r *negentropy.Responder
		if r, err = negentropy.NewResponder(restrict(st, se.floor), se.frame); err == nil {
			reply, err = r.Reconcile(msg)
		}
	})
	if err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "negentropy message")
	}
	return reply, nil
}

// symbols answers riblt symbols from the sketch frozen at open.
func symbols(se *session, req SymbolsRequest) ([]byte, error) {
	if se.sketch == nil {
		return nil, events.Errorf(events.ReasonMalformed, "session %s reconciles with %s, not riblt", se.id, se.mode)
	}
	if req.Count < 1 || req.Count > MaxSymbols {
		return nil, events.Errorf(events.ReasonTooLarge, "asked for %d riblt symbols; 1 to %d per request", req.Count, MaxSymbols)
	}
	return se.sketch.AppendSymbols(make([]byte, 0, req.Count*riblt.SymbolSize), req.From, req.From+req.Count)
}

// fetch answers the asked-for facts, by id and by prefix, with the tokens
// they cite and, for each fact, its trace context, continued towards peer
// (the requester; its device key is its peer key).
func (s *Service) fetch(ctx context.Context, peer events.PeerID, auth events.AuthorityID, req FetchRequest) ([]byte, error) {
	if n := len(req.IDs) + len(req.Prefixes); n > MaxFetch {
		return nil, events.Errorf(events.ReasonTooLarge, "fetch asks for %d facts, limit %d", n, MaxFetch)
	}
	ids := make([]events.FactID, len(req.IDs))
	for i, h := range req.IDs {
		var err error
		if ids[i], err = events.ParseFactID(h); err != nil {
			return nil, err
		}
	}
	prefixes := make([]riblt.Prefix, len(req.Prefixes))
	for i, h := range req.Prefixes {
		var err error
		if prefixes[i], err = riblt.ParsePrefix(h); err != nil {
			return nil, err
		}
	}
	batch, err := s.batch(ctx, auth, append(idRefs(ids), prefixRefs(prefixes)...))
	if err != nil {
		return nil, err
	}
	end := s.traceOutgoing(ctx, spanFetch, peer, auth, batch.FactBatch, batch.stored)
	out, err := proto.Marshal(batch.FactBatch)
	if err != nil {
		err = events.Wrap(events.ReasonInternal, err, "encode fact batch")
	}
	end(err)
	return out, err
}

// push takes facts peer found this one lacks and hands them to this
// peer's guard through INGRESS, each continuing the trace it carried.
// Only the authority's facts are accepted here; the guard checks
// signatures, tokens and rights. Facts before the session's floor are
// dropped: that range is settled here, and may have been pruned.
func (s *Service) push(ctx context.Context, peer events.PeerID, auth events.AuthorityID, floor uint32, body []byte) ([]byte, error) {
	if len(body) > MaxPushBytes {
		return nil, events.Errorf(events.ReasonTooLarge, "push is %d bytes, limit %d", len(body), MaxPushBytes)
	}
	var batch eventsv1.FactBatch
	if err := proto.Unmarshal(body, &batch); err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "push body is not a FactBatch")
	}
	if len(batch.Facts) > MaxFetch {
		return nil, events.Errorf(events.ReasonTooLarge, "push carries %d facts, limit %d", len(batch.Facts), MaxFetch)
	}
	var kept []*events.Fact
	var traces []*eventsv1.TraceContext
	for i, sf := range batch.Facts {
		f, err := events.FactFromProto(sf)
		if err != nil {
			return nil, err
		}
		if f.Authority != auth {
			return nil, events.Errorf(events.ReasonMalformed, "pushed fact %s belongs to authority %s, not the session's %s", f.ID, f.Authority, auth)
		}
		if f.HLC.Seconds() >= floor {
			kept = append(kept, f)
			traces = append(traces, traceAt(&batch, i))
		}
	}
	if len(kept) > 0 {
		if err := s.ingest(ctx, peer, auth, kept, traces, batch.Tokens); err != nil {
			return nil, err
		}
	}
	s.metrics.facts(ctx, "pushed_in", len(kept))
	return json.Marshal(PushReply{Facts: len(kept)})
}

// status reports the peers, whether this peer initiates sessions for
// auth, and auth's recent sessions: the asker's `sync` right covers auth
// alone, so other authorities' sessions are not its business.
func (s *Service) status(auth events.AuthorityID) Status {
	_, initiates := s.creds[auth]
	st := Status{Peer: s.env.Peer, Open: s.sessions.count(), Initiates: initiates}
	var recent []SyncReport
	st.Peers, recent = s.peers.snapshot()
	for _, rep := range recent {
		if rep.Authority == auth {
			st.Sessions = append(st.Sessions, rep)
		}
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int {
		if c := cmp.Compare(b.Score, a.Score); c != 0 {
			return c
		}
		return cmp.Compare(a.Peer, b.Peer)
	})
	return st
}
