package query_test

import (
	"encoding/json"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/query"
)

// FuzzRequest sends arbitrary JSON filter trees and cursors, as a client
// may, through a sorted, paginated query: no input crashes the decoder or
// the page walk, every refusal is bad_query, and every document a page
// returns matches the filter.
func FuzzRequest(f *testing.F) {
	s := sampleStore()
	sort := []events.SortKey{{Field: "priority", Desc: true}, {Field: "title"}}
	first, err := query.FromRequest(events.QueryRequest{Selection: events.Selection{Collection: "c"}, Sort: sort, Limit: 1})
	if err != nil {
		f.Fatal(err)
	}
	_, cursor := first.Page(s, s.ix)
	f.Add([]byte(`{"op":"and","args":[{"op":"eq","field":"status","value":"open"},{"op":"exists","field":"loc"}]}`), cursor)
	f.Add([]byte(`{"op":"or","args":[{"op":"within_radius","field":"loc","geo":[52.5,13.4,1000]},{"op":"not","args":[{"op":"prefix","field":"title","value":"buy"}]}]}`), "")
	f.Add([]byte(`{"op":"in","field":"tags","value":[1,"done",{"a":[null]}]}`), "eyJzb3J0IjoiIn0")
	f.Fuzz(func(t *testing.T, filter []byte, cursor string) {
		req := events.QueryRequest{Selection: events.Selection{Collection: "c", Deleted: events.IncludeDeleted}, Sort: sort, Limit: 2, Cursor: cursor}
		if len(filter) > 0 {
			req.Filter = json.RawMessage(filter)
		}
		q, err := query.FromRequest(req)
		if err != nil {
			if !events.IsReason(err, events.ReasonBadQuery) {
				t.Fatalf("refused without bad_query: %v", err)
			}
			return
		}
		docs, _ := q.Page(s, s.ix)
		for _, d := range docs {
			if !q.Matches(d) {
				t.Fatalf("page returned %s, which the filter does not match", d.ID)
			}
		}
	})
}
