package sdk

import (
	"context"
	"encoding/json"
	"iter"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/query"
)

// Query selects and orders documents. Give the filter either as an
// expression in the query language (Where, e.g.
// `priority >= 2 and status == "open"`) or as a syntax tree (Filter), not
// both; with neither every document matches. The zero Query selects every
// document that is not deleted, ordered by id, one default-sized page.
type Query struct {
	Where  string
	Filter *query.Filter
	// Deleted chooses whether deleted documents are excluded (the zero
	// value), included, or the only ones selected.
	Deleted events.DeletedMode
	// Sort orders the results; ties and the zero value order by id.
	Sort []events.SortKey
	// Limit caps the page size: zero means events.DefaultQueryLimit, and
	// no page exceeds events.MaxQueryLimit.
	Limit int
	// Cursor is a previous Page's NextCursor.
	Cursor string
}

// Selection renders the query's filter part as it travels on the wire.
func (q Query) Selection(collection string) (events.Selection, error) {
	if err := events.CheckName("collection", collection); err != nil {
		return events.Selection{}, err
	}
	if err := q.Deleted.Check(); err != nil {
		return events.Selection{}, err
	}
	sel := events.Selection{Collection: collection, Where: q.Where, Deleted: q.Deleted}
	if q.Filter != nil {
		if q.Where != "" {
			return events.Selection{}, events.Errorf(events.ReasonBadQuery, "give a filter either as Where or as Filter, not both")
		}
		if err := q.Filter.Check(); err != nil {
			return events.Selection{}, err
		}
		raw, err := json.Marshal(q.Filter)
		if err != nil {
			return events.Selection{}, events.Wrap(events.ReasonBadQuery, err, "encode filter")
		}
		sel.Filter = raw
	}
	return sel, nil
}

// Request renders the whole query as a journal query request.
func (q Query) Request(collection string) (events.QueryRequest, error) {
	sel, err := q.Selection(collection)
	if err != nil {
		return events.QueryRequest{}, err
	}
	if q.Limit < 0 {
		return events.QueryRequest{}, events.Errorf(events.ReasonBadQuery, "limit %d is negative", q.Limit)
	}
	return events.QueryRequest{Selection: sel, Sort: q.Sort, Limit: q.Limit, Cursor: q.Cursor}, nil
}

// CheckObservable refuses the parts of a query an observation cannot
// honour: a live matching set has no pages.
func (q Query) CheckObservable() error {
	if q.Limit != 0 || q.Cursor != "" {
		return events.Errorf(events.ReasonBadQuery, "an observation follows the whole matching set; Limit and Cursor must be zero")
	}
	return nil
}

// All iterates over every document matching q, page by page, starting at
// q.Cursor. It stops at the first error, yielding it.
func All(ctx context.Context, store DocumentStore, collection string, q Query) iter.Seq2[Document, error] {
	return func(yield func(Document, error) bool) {
		for {
			page, err := store.Query(ctx, collection, q)
			if err != nil {
				yield(Document{}, err)
				return
			}
			for _, d := range page.Documents {
				if !yield(d, nil) {
					return
				}
			}
			if page.NextCursor == "" {
				return
			}
			q.Cursor = page.NextCursor
		}
	}
}

// Matcher returns the query's selection as a predicate on documents (the
// deleted mode, then the filter), as observations use it.
func (q Query) Matcher(collection string) (func(Document) bool, error) {
	sel, err := q.Selection(collection)
	if err != nil {
		return nil, err
	}
	checked, err := query.FromSelection(sel)
	if err != nil {
		return nil, err
	}
	return checked.Matches, nil
}
