// Package antientropy reconciles an authority's fact set between peers.
//
// This file is the responder side of a peer: an index of every accepted
// fact per authority, kept up to date from JOURNAL, which answers negentropy
// reconciliation messages (package negentropy) and hands out facts by id
// with the tokens they cite, so a requesting peer can load them into its
// own INGRESS, where its guard verifies them again. Requests arrive on
// fs.svc.antientropy.<op>.<authority> only after this peer's guard has
// checked the requester's `sync` right (docs/antientropy.md).
package antientropy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Name is the service's name and queue group.
const Name = "antientropy"

// The request operations the responder answers.
const (
	// OpReconcile takes a raw negentropy message and answers the raw reply.
	OpReconcile = "reconcile"
	// OpFetch takes a FetchRequest and answers an encoded eventsv1.FactBatch.
	OpFetch = "fetch"
)

// MaxFetch bounds the facts one fetch may ask for.
const MaxFetch = 1000

// FetchRequest asks for facts by id (lowercase hex FactIDs).
type FetchRequest struct {
	IDs []string `json:"ids"`
}

// Config tunes the responder. The zero value is usable.
type Config struct {
	// FrameSizeLimit bounds one negentropy reply; default
	// negentropy.DefaultFrameSizeLimit.
	FrameSizeLimit int
}

// Service is the anti-entropy service.
type Service struct {
	cfg Config

	mu   sync.RWMutex
	sets map[events.AuthorityID]*factSet
}

// factSet is one authority's facts: the reconciliation index, and where
// each fact sits in JOURNAL so fetch can read it back.
type factSet struct {
	index negentropy.Index
	mu    sync.RWMutex
	seq   map[events.FactID]uint64
}

var _ service.Service = (*Service)(nil)

// New returns the anti-entropy service.
func New(cfg Config) *Service {
	if cfg.FrameSizeLimit <= 0 {
		cfg.FrameSizeLimit = negentropy.DefaultFrameSizeLimit
	}
	return &Service{cfg: cfg, sets: map[events.AuthorityID]*factSet{}}
}

// Name implements service.Service.
func (s *Service) Name() string { return Name }

// Streams implements service.Service: JOURNAL is the guard's.
func (s *Service) Streams() []jetstream.StreamConfig { return nil }

// Run builds the index from JOURNAL, becomes ready once it has caught up
// with what JOURNAL held at start, and answers requests until ctx ends.
// The index lives in memory and is rebuilt at every start, so the service
// reads JOURNAL with an ordered consumer rather than a durable one: there
// is no position worth keeping.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	journal, err := bus.WaitForStream(ctx, env.JS, events.StreamJournal, env.Clock, env.Log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("antientropy: %w", err)
	}
	info, err := journal.Info(ctx)
	if err != nil {
		return fmt.Errorf("antientropy: JOURNAL info: %w", err)
	}
	caughtUp := make(chan struct{})
	var once sync.Once
	markCaughtUp := func() { once.Do(func() { close(caughtUp) }) }
	if info.State.LastSeq == 0 {
		markCaughtUp()
	}
	cons, err := journal.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.JournalPrefix + ".>"}})
	if err != nil {
		return fmt.Errorf("antientropy: JOURNAL consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		if f, err := events.DecodeFact(m.Data()); err == nil {
			s.add(f, md.Sequence.Stream)
		} else {
			env.Log.Warn("antientropy: skipping a JOURNAL message that is not a fact", "seq", md.Sequence.Stream, "err", err)
		}
		if md.Sequence.Stream >= info.State.LastSeq {
			markCaughtUp()
		}
	})
	if err != nil {
		return fmt.Errorf("antientropy: consume JOURNAL: %w", err)
	}
	defer cc.Stop()
	select {
	case <-caughtUp:
	case <-ctx.Done():
		return nil
	}

	var subs []*nats.Subscription
	defer func() {
		for _, sub := range subs {
			_ = sub.Drain()
		}
	}()
	for op, handle := range map[string]func(context.Context, events.AuthorityID, []byte) ([]byte, error){
		OpReconcile: s.reconcile,
		OpFetch: func(ctx context.Context, a events.AuthorityID, b []byte) ([]byte, error) {
			return s.fetch(ctx, journal, a, b)
		},
	} {
		sub, err := env.Conn.QueueSubscribe(events.ServiceSubject(Name, op, "*"), Name, func(m *nats.Msg) {
			addr, err := events.ParseAPISubject(events.ServicePrefix, m.Subject)
			var reply []byte
			if err == nil {
				reply, err = handle(bus.ExtractTrace(ctx, m.Header), addr.Authority, m.Data)
			}
			if err != nil {
				_ = m.RespondMsg(bus.ErrorReply(err))
				return
			}
			_ = m.Respond(reply)
		})
		if err != nil {
			return fmt.Errorf("antientropy: subscribe %s: %w", op, err)
		}
		subs = append(subs, sub)
	}
	env.Ready()
	<-ctx.Done()
	return nil
}

// add indexes one accepted fact at its JOURNAL sequence.
func (s *Service) add(f *events.Fact, seq uint64) {
	set := s.set(f.Authority, true)
	set.mu.Lock()
	set.seq[f.ID] = seq
	set.mu.Unlock()
	set.index.Insert(negentropy.Item{Timestamp: uint64(f.HLC.Seconds()), ID: f.ID})
}

// set returns an authority's fact set, creating it when create is set.
func (s *Service) set(auth events.AuthorityID, create bool) *factSet {
	s.mu.RLock()
	set := s.sets[auth]
	s.mu.RUnlock()
	if set != nil || !create {
		return set
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if set = s.sets[auth]; set == nil {
		set = &factSet{seq: map[events.FactID]uint64{}}
		s.sets[auth] = set
	}
	return set
}

// Root returns the negentropy root of an authority's set: its id sum and
// count, equal on two peers exactly when their sets are (barring a hash
// collision).
func (s *Service) Root(auth events.AuthorityID) (negentropy.Accumulator, int) {
	if set := s.set(auth, false); set != nil {
		return set.index.Root()
	}
	return negentropy.Accumulator{}, 0
}

// reconcile answers one negentropy message against a consistent view of
// the authority's set. An authority this peer has no facts of is an empty
// set, not an error: the requester learns it should push everything.
func (s *Service) reconcile(_ context.Context, auth events.AuthorityID, msg []byte) ([]byte, error) {
	var empty negentropy.Index
	index := &empty
	if set := s.set(auth, false); set != nil {
		index = &set.index
	}
	var reply []byte
	var err error
	index.View(func(st negentropy.Storage) {
		var r *negentropy.Responder
		if r, err = negentropy.NewResponder(st, s.cfg.FrameSizeLimit); err == nil {
			reply, err = r.Reconcile(msg)
		}
	})
	if err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "negentropy message")
	}
	return reply, nil
}

// fetch reads the asked-for facts back from JOURNAL and returns them with
// the tokens they cite, each token once.
func (s *Service) fetch(ctx context.Context, journal jetstream.Stream, auth events.AuthorityID, body []byte) ([]byte, error) {
	var req FetchRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "fetch request")
	}
	if len(req.IDs) > MaxFetch {
		return nil, events.Errorf(events.ReasonTooLarge, "fetch asks for %d facts, limit %d", len(req.IDs), MaxFetch)
	}
	set := s.set(auth, false)
	batch := &eventsv1.FactBatch{}
	tokens := map[string]bool{}
	for _, h := range req.IDs {
		id, err := events.ParseFactID(h)
		if err != nil {
			return nil, err
		}
		var seq uint64
		if set != nil {
			set.mu.RLock()
			seq = set.seq[id]
			set.mu.RUnlock()
		}
		if seq == 0 {
			return nil, events.Errorf(events.ReasonNotFound, "fact %s of authority %s is not on this peer", id, auth)
		}
		raw, err := journal.GetMsg(ctx, seq)
		if err != nil {
			return nil, events.Wrap(events.ReasonUnavailable, err, "read fact "+h+" from JOURNAL")
		}
		f, err := events.DecodeFact(raw.Data)
		if err != nil {
			return nil, events.Wrap(events.ReasonInternal, err, "JOURNAL holds an undecodable fact at "+fmt.Sprint(seq))
		}
		batch.Facts = append(batch.Facts, f.Proto())
		if th := f.TokenHash(); !tokens[th] {
			tokens[th] = true
			tok, err := journal.GetLastMsgForSubject(ctx, events.TokenSubject(auth, th))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return nil, events.Errorf(events.ReasonNotFound, "token %s cited by fact %s is not in JOURNAL", th, id)
			}
			if err != nil {
				return nil, events.Wrap(events.ReasonUnavailable, err, "read token "+th)
			}
			batch.Tokens = append(batch.Tokens, tok.Data)
		}
	}
	out, err := proto.Marshal(batch)
	if err != nil {
		return nil, events.Wrap(events.ReasonInternal, err, "encode fact batch")
	}
	return out, nil
}
