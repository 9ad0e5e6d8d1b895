package query

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"iter"
	"maps"
	"slices"
	"strings"

	"github.com/factsync/factsync/events"
)

// Store is what a query reads. fold.State implements it.
type Store interface {
	Get(coll, id string) (events.Document, bool)
	// Documents yields a collection's documents, deleted ones included,
	// in ascending id order.
	Documents(coll string) iter.Seq[events.Document]
}

// MaxSortKeys bounds the sort keys of one query.
const MaxSortKeys = 4

// Query is a checked selection, sort and page request.
type Query struct {
	Collection string
	Deleted    events.DeletedMode
	Sort       []events.SortKey
	Limit      int

	filter *Filter   // nil selects every document
	match  *matcher  // compiled filter
	after  *position // the cursor's position; nil for the first page
}

// FromSelection checks a selection (as in a count or an observer). The
// collection name must be valid; Where and Filter are mutually exclusive.
func FromSelection(sel events.Selection) (*Query, error) {
	if err := events.CheckName("collection", sel.Collection); err != nil {
		return nil, events.Errorf(events.ReasonBadQuery, "%s", err.(*events.Error).Detail)
	}
	if err := sel.Deleted.Check(); err != nil {
		return nil, err
	}
	q := &Query{Collection: sel.Collection, Deleted: sel.Deleted, Limit: events.DefaultQueryLimit}
	var err error
	switch {
	case sel.Where != "" && len(sel.Filter) > 0:
		return nil, events.Errorf(events.ReasonBadQuery, "give either where or filter, not both")
	case sel.Where != "":
		q.filter, err = Parse(sel.Where)
	case len(sel.Filter) > 0:
		q.filter, err = DecodeFilter(sel.Filter)
	}
	if err != nil {
		return nil, err
	}
	if q.filter != nil {
		q.match = compile(q.filter)
	}
	return q, nil
}

// FromRequest checks a query request: the selection, the sort keys, the
// limit (0 means DefaultQueryLimit, at most MaxQueryLimit) and the cursor.
func FromRequest(req events.QueryRequest) (*Query, error) {
	q, err := FromSelection(req.Selection)
	if err != nil {
		return nil, err
	}
	if len(req.Sort) > MaxSortKeys {
		return nil, events.Errorf(events.ReasonBadQuery, "%d sort keys, limit %d", len(req.Sort), MaxSortKeys)
	}
	for _, k := range req.Sort {
		if err := checkField(k.Field); err != nil {
			return nil, events.Errorf(events.ReasonBadQuery, "sort: %s", err.(*events.Error).Detail)
		}
	}
	q.Sort = req.Sort
	switch {
	case req.Limit < 0 || req.Limit > events.MaxQueryLimit:
		return nil, events.Errorf(events.ReasonBadQuery, "limit %d is outside 0 to %d", req.Limit, events.MaxQueryLimit)
	case req.Limit > 0:
		q.Limit = req.Limit
	}
	if req.Cursor != "" {
		if q.after, err = q.decodeCursor(req.Cursor); err != nil {
			return nil, err
		}
	}
	return q, nil
}

// Filter returns the checked filter, or nil when the query selects every
// document.
func (q *Query) Filter() *Filter { return q.filter }

// Matches reports whether d is selected: the deleted mode, then the filter.
func (q *Query) Matches(d events.Document) bool {
	switch {
	case q.Deleted == events.ExcludeDeleted && d.Deleted,
		q.Deleted == events.OnlyDeleted && !d.Deleted:
		return false
	}
	return q.match == nil || q.match.match(newRecord(d.Fields))
}

// candidates yields the documents that may match, in ascending id order:
// from the index when it can narrow the filter, else every document.
func (q *Query) candidates(s Store, ix *Index) iter.Seq[events.Document] {
	if q.match != nil {
		if ids, ok := ix.candidates(q.match); ok {
			return func(yield func(events.Document) bool) {
				for _, id := range slices.Sorted(maps.Keys(ids)) {
					if d, ok := s.Get(q.Collection, id); ok && !yield(d) {
						return
					}
				}
			}
		}
	}
	return s.Documents(q.Collection)
}

// Count returns how many documents match. ix may be nil.
func (q *Query) Count(s Store, ix *Index) int {
	n := 0
	for d := range q.candidates(s, ix) {
		if q.Matches(d) {
			n++
		}
	}
	return n
}

// Page returns the next page of matching documents in sort order (then id
// order), and the cursor of the page after it, empty on the last page.
// ix may be nil.
func (q *Query) Page(s Store, ix *Index) (docs []events.Document, next string) {
	var matched []positioned
	for d := range q.candidates(s, ix) {
		if !q.Matches(d) {
			continue
		}
		p := positioned{doc: d, pos: q.positionOf(d)}
		if q.after != nil && q.compare(p.pos, *q.after) <= 0 {
			continue
		}
		matched = append(matched, p)
		// Candidates come in id order, so without sort keys the first
		// Limit+1 matches are the page and the proof of a next one.
		if len(q.Sort) == 0 && len(matched) > q.Limit {
			break
		}
	}
	slices.SortFunc(matched, func(a, b positioned) int { return q.compare(a.pos, b.pos) })
	if len(matched) > q.Limit {
		matched = matched[:q.Limit]
		next = q.encodeCursor(matched[len(matched)-1].pos)
	}
	docs = make([]events.Document, len(matched))
	for i, p := range matched {
		docs[i] = p.doc
	}
	return docs, next
}

// sortValue is one sort-key value; V is nil when the field is missing
// (and "null" when the field holds null).
type sortValue struct {
	V json.RawMessage `json:"v,omitempty"`
}

type positioned struct {
	doc events.Document
	pos position
}

// position is where a document falls in a query's order: its sort-key
// values and its id.
type position struct {
	Keys []sortValue `json:"k"`
	ID   string      `json:"id"`
	Sort string      `json:"s"` // the sort spec, so a cursor is not reused with another
}

func (q *Query) sortSpec() string {
	var b strings.Builder
	for _, k := range q.Sort {
		b.WriteString(k.Field)
		if k.Desc {
			b.WriteString(" desc")
		}
		b.WriteByte(',')
	}
	return b.String()
}

func (q *Query) positionOf(d events.Document) position {
	p := position{ID: d.ID, Sort: q.sortSpec(), Keys: make([]sortValue, len(q.Sort))}
	for i, k := range q.Sort {
		p.Keys[i].V = d.Fields[k.Field]
	}
	return p
}

// compare orders positions by each sort key (missing values last in either
// direction), then by id.
func (q *Query) compare(a, b position) int {
	for i, k := range q.Sort {
		av, bv := a.Keys[i].V, b.Keys[i].V
		switch {
		case av == nil && bv == nil:
			continue
		case av == nil:
			return 1
		case bv == nil:
			return -1
		}
		c := compareValues(av, bv)
		if k.Desc {
			c = -c
		}
		if c != 0 {
			return c
		}
	}
	return strings.Compare(a.ID, b.ID)
}

// compareValues is a total order on JSON values: null < booleans < numbers
// < strings < arrays < objects; arrays and objects by canonical text.
func compareValues(a, b json.RawMessage) int {
	av, _ := decodeValue(a)
	bv, _ := decodeValue(b)
	if c := cmp.Compare(rank(av), rank(bv)); c != 0 {
		return c
	}
	switch x := av.(type) {
	case bool:
		return cmp.Compare(boolInt(x), boolInt(bv.(bool)))
	case float64, string:
		c, _ := compareOrdered(av, bv)
		return c
	case nil:
		return 0
	}
	return strings.Compare(valueKey(av), valueKey(bv))
}

func rank(v any) int {
	switch v.(type) {
	case nil:
		return 0
	case bool:
		return 1
	case float64:
		return 2
	case string:
		return 3
	case []any:
		return 4
	}
	return 5
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (q *Query) encodeCursor(p position) string {
	b, _ := json.Marshal(p)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (q *Query) decodeCursor(s string) (*position, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	var p position
	if err == nil {
		err = json.Unmarshal(raw, &p)
	}
	if err != nil {
		return nil, events.Errorf(events.ReasonBadQuery, "cursor is not one this journal issued")
	}
	if p.Sort != q.sortSpec() || len(p.Keys) != len(q.Sort) {
		return nil, events.Errorf(events.ReasonBadQuery, "cursor was issued for sort %q, not %q", p.Sort, q.sortSpec())
	}
	for _, k := range p.Keys {
		if k.V != nil && !json.Valid(k.V) {
			return nil, events.Errorf(events.ReasonBadQuery, "cursor is not one this journal issued")
		}
	}
	return &p, nil
}
