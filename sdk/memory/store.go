package memory

import (
	"context"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/shared/query"
)

// store is the backend's DocumentStore. Writes are visible to reads as
// soon as they return.
type store struct{ b *Backend }

var _ sdk.DocumentStore = (*store)(nil)

func (s *store) Upsert(ctx context.Context, collection, id string, fields any) (sdk.WriteResult, error) {
	return sdk.ApplyUpsert(ctx, s, collection, id, fields)
}

func (s *store) Delete(ctx context.Context, collection, id, reason string) (sdk.WriteResult, error) {
	return sdk.ApplyDelete(ctx, s, collection, id, reason)
}

func (s *store) Apply(ctx context.Context, writes ...sdk.Write) ([]sdk.WriteResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "write abandoned")
	}
	if len(writes) > events.MaxBatchFacts {
		return nil, events.Errorf(events.ReasonTooLarge, "%d writes in one batch, limit %d", len(writes), events.MaxBatchFacts)
	}
	return s.b.write(writes)
}

func (s *store) Get(_ context.Context, collection, id string) (sdk.Document, error) {
	if err := events.CheckName("collection", collection); err != nil {
		return sdk.Document{}, err
	}
	if err := events.CheckName("document id", id); err != nil {
		return sdk.Document{}, err
	}
	s.b.mu.RLock()
	defer s.b.mu.RUnlock()
	if err := s.b.checkReady(); err != nil {
		return sdk.Document{}, err
	}
	d, ok := s.b.state.Get(collection, id)
	if !ok || d.Deleted {
		return sdk.Document{}, events.Errorf(events.ReasonNotFound, "document %s/%s does not exist", collection, id)
	}
	return d, nil
}

func (s *store) Query(_ context.Context, collection string, q sdk.Query) (sdk.Page, error) {
	checked, err := checkQuery(collection, q)
	if err != nil {
		return sdk.Page{}, err
	}
	s.b.mu.RLock()
	defer s.b.mu.RUnlock()
	if err := s.b.checkReady(); err != nil {
		return sdk.Page{}, err
	}
	docs, next := checked.Page(s.b.state, nil)
	return sdk.Page{Documents: docs, NextCursor: next}, nil
}

func (s *store) Count(_ context.Context, collection string, q sdk.Query) (int, error) {
	sel, err := q.Selection(collection)
	if err != nil {
		return 0, err
	}
	checked, err := query.FromSelection(sel)
	if err != nil {
		return 0, err
	}
	s.b.mu.RLock()
	defer s.b.mu.RUnlock()
	if err := s.b.checkReady(); err != nil {
		return 0, err
	}
	return checked.Count(s.b.state, nil), nil
}

func (s *store) Observe(ctx context.Context, collection string, q sdk.Query) (*sdk.Observation, error) {
	if err := q.CheckObservable(); err != nil {
		return nil, err
	}
	match, err := q.Matcher(collection)
	if err != nil {
		return nil, err
	}
	q.Limit = events.MaxQueryLimit
	if _, err := checkQuery(collection, q); err != nil {
		return nil, err
	}
	s.b.mu.RLock()
	err = s.b.checkReady()
	buffer := s.b.cfg.ObserveBufferSize()
	s.b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return s.b.observers.Start(ctx, collection, sdk.ObservationSource{
		Match:    match,
		Snapshot: func(context.Context) ([]sdk.Document, uint64, error) { return s.snapshot(collection, q) },
		Buffer:   buffer,
	}), nil
}

// snapshot returns every matching document and the change sequence it
// reflects, read under one lock so no change falls between the two.
func (s *store) snapshot(collection string, q sdk.Query) ([]sdk.Document, uint64, error) {
	s.b.mu.RLock()
	defer s.b.mu.RUnlock()
	if err := s.b.checkReady(); err != nil {
		return nil, 0, err
	}
	var all []sdk.Document
	for {
		checked, err := checkQuery(collection, q)
		if err != nil {
			return nil, 0, err
		}
		docs, next := checked.Page(s.b.state, nil)
		all = append(all, docs...)
		if next == "" {
			return all, s.b.seq, nil
		}
		q.Cursor = next
	}
}

func checkQuery(collection string, q sdk.Query) (*query.Query, error) {
	req, err := q.Request(collection)
	if err != nil {
		return nil, err
	}
	return query.FromRequest(req)
}
