package natsbackend

import (
	"context"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

// store is the backend's DocumentStore.
type store struct{ b *Backend }

var _ sdk.DocumentStore = (*store)(nil)

func (s *store) Upsert(ctx context.Context, collection, id string, fields any) (sdk.WriteResult, error) {
	return sdk.ApplyUpsert(ctx, s, collection, id, fields)
}

func (s *store) Delete(ctx context.Context, collection, id, reason string) (sdk.WriteResult, error) {
	return sdk.ApplyDelete(ctx, s, collection, id, reason)
}

// Apply signs the writes, publishes them to INGRESS and, unless the
// backend is AcceptedOnly, waits until the journal shows each document at
// the write's version or later.
func (s *store) Apply(ctx context.Context, writes ...sdk.Write) ([]sdk.WriteResult, error) {
	_, signer, err := s.b.live()
	if err != nil {
		return nil, err
	}
	facts, err := signer.Sign(writes...)
	if err != nil {
		return nil, err
	}
	var pending []*visibility
	if !s.b.opts.AcceptedOnly {
		for _, f := range facts {
			pending = append(pending, s.b.changes.await(f))
		}
		defer func() {
			for _, v := range pending {
				s.b.changes.forget(v)
			}
		}()
	}
	if err := s.b.publisher.publish(ctx, facts); err != nil {
		return nil, err
	}
	if err := s.waitVisible(ctx, pending); err != nil {
		return nil, err
	}
	// Visible means JOURNAL holds the write, and anti-entropy indexes
	// JOURNAL as it grows, so the sync this asks for finds it (unless
	// the index lags, or the write was AcceptedOnly: the server's own
	// interval then carries it).
	s.b.engine.noteWrite()
	results := make([]sdk.WriteResult, len(facts))
	for i, f := range facts {
		results[i] = sdk.ResultOf(f)
	}
	return results, nil
}

// Polling intervals for writes whose change notification did not come
// (core NATS may drop it, or the fact changed nothing visible).
const (
	firstPoll = 50 * time.Millisecond
	maxPoll   = time.Second
)

// waitVisible returns once every write is visible, polling the journal
// between change notifications.
func (s *store) waitVisible(ctx context.Context, pending []*visibility) error {
	if len(pending) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.b.opts.VisibleTimeout)
	defer cancel()
	interval := firstPoll
	for {
		open := pending[:0]
		for _, v := range pending {
			select {
			case <-v.done:
				if v.err != nil {
					return v.err
				}
			default:
				open = append(open, v)
			}
		}
		pending = open
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-pending[0].done:
			continue
		case <-s.b.clock.After(interval):
		case <-ctx.Done():
			return events.Wrap(events.ReasonUnavailable, ctx.Err(),
				"the write was stored in INGRESS but the journal does not show it yet; the guard may have denied it (see the DENIED stream)")
		}
		interval = min(2*interval, maxPoll)
		for _, v := range pending {
			var reply events.GetReply
			err := s.b.request(ctx, events.OpGet, events.GetRequest{Collection: v.key.collection, ID: v.key.id, IncludeDeleted: true}, &reply)
			if err == nil && reply.Document.Version.Compare(v.version) >= 0 {
				s.b.changes.forget(v)
			}
		}
	}
}

func (s *store) Get(ctx context.Context, collection, id string) (sdk.Document, error) {
	if err := events.CheckName("collection", collection); err != nil {
		return sdk.Document{}, err
	}
	if err := events.CheckName("document id", id); err != nil {
		return sdk.Document{}, err
	}
	var reply events.GetReply
	if err := s.b.request(ctx, events.OpGet, events.GetRequest{Collection: collection, ID: id}, &reply); err != nil {
		return sdk.Document{}, err
	}
	return reply.Document, nil
}

func (s *store) Query(ctx context.Context, collection string, q sdk.Query) (sdk.Page, error) {
	req, err := q.Request(collection)
	if err != nil {
		return sdk.Page{}, err
	}
	var reply events.QueryReply
	if err := s.b.request(ctx, events.OpQuery, req, &reply); err != nil {
		return sdk.Page{}, err
	}
	return sdk.Page{Documents: reply.Documents, NextCursor: reply.NextCursor}, nil
}

func (s *store) Count(ctx context.Context, collection string, q sdk.Query) (int, error) {
	sel, err := q.Selection(collection)
	if err != nil {
		return 0, err
	}
	var reply events.CountReply
	if err := s.b.request(ctx, events.OpCount, events.CountRequest{Selection: sel}, &reply); err != nil {
		return 0, err
	}
	return reply.Count, nil
}

// Observe follows the journal's change notifications from before the
// initial query, so no change falls between the two; changes the query
// already reflects (by JOURNAL sequence) are dropped.
func (s *store) Observe(ctx context.Context, collection string, q sdk.Query) (*sdk.Observation, error) {
	if err := q.CheckObservable(); err != nil {
		return nil, err
	}
	match, err := q.Matcher(collection)
	if err != nil {
		return nil, err
	}
	q.Limit = events.MaxQueryLimit
	if _, err := q.Request(collection); err != nil {
		return nil, err
	}
	if _, _, err := s.b.live(); err != nil {
		return nil, err
	}
	return s.b.observers.Start(ctx, collection, sdk.ObservationSource{
		Match:    match,
		Snapshot: func(ctx context.Context) ([]sdk.Document, uint64, error) { return s.snapshot(ctx, collection, q) },
		Buffer:   s.b.cfg.ObserveBufferSize(),
	}), nil
}

// snapshot reads every page of the query. Pages may be answered at
// different JOURNAL sequences; the lowest one is returned so no change is
// missed (a change already shown is then dropped by its version).
func (s *store) snapshot(ctx context.Context, collection string, q sdk.Query) ([]sdk.Document, uint64, error) {
	var all []sdk.Document
	var seq uint64
	for first := true; ; first = false {
		req, err := q.Request(collection)
		if err != nil {
			return nil, 0, err
		}
		var reply events.QueryReply
		if err := s.b.request(ctx, events.OpQuery, req, &reply); err != nil {
			return nil, 0, err
		}
		if first || reply.Seq < seq {
			seq = reply.Seq
		}
		all = append(all, reply.Documents...)
		if reply.NextCursor == "" {
			return all, seq, nil
		}
		q.Cursor = reply.NextCursor
	}
}
