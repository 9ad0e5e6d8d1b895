package query_test

import (
	"encoding/json"
	"fmt"
	"iter"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/query"
	"pgregory.net/rapid"
)

var _ query.Store = fold.New()

// memStore is a Store over a map, with an index kept up to date.
type memStore struct {
	docs map[string]events.Document
	ix   *query.Index
}

func newStore(indexed ...string) *memStore {
	return &memStore{docs: map[string]events.Document{}, ix: query.NewIndex(indexed...)}
}

func (s *memStore) put(id string, fields string, deleted bool) {
	var f map[string]json.RawMessage
	if err := json.Unmarshal([]byte(fields), &f); err != nil {
		panic(err)
	}
	d := events.Document{Collection: "c", ID: id, Fields: f, Deleted: deleted}
	s.ix.Update(s.docs[id], d)
	s.docs[id] = d
}

func (s *memStore) Get(coll, id string) (events.Document, bool) {
	d, ok := s.docs[id]
	return d, ok && coll == "c"
}

func (s *memStore) Documents(coll string) iter.Seq[events.Document] {
	return func(yield func(events.Document) bool) {
		for _, id := range slices.Sorted(maps.Keys(s.docs)) {
			if !yield(s.docs[id]) {
				return
			}
		}
	}
}

func ids(docs []events.Document) []string {
	out := []string{}
	for _, d := range docs {
		out = append(out, d.ID)
	}
	return out
}

func sampleStore() *memStore {
	s := newStore("status")
	s.put("t1", `{"title":"buy milk","priority":3,"status":"open","tags":["home"],"loc":{"lat":52.52,"lon":13.405}}`, false)
	s.put("t2", `{"title":"file taxes","priority":1,"status":"open","tags":["done","work"]}`, false)
	s.put("t3", `{"title":"buy bread","priority":2,"status":"closed","loc":{"lat":48.8566,"lon":2.3522}}`, false)
	s.put("t4", `{"title":"call mum","priority":2.0,"status":"open","note":null}`, false)
	s.put("t5", `{}`, true)
	return s
}

func TestWhere(t *testing.T) {
	cases := []struct {
		where string
		want  []string
	}{
		{`priority >= 2 and status == "open" and not (tags contains "done")`, []string{"t1", "t4"}},
		{`priority == 2`, []string{"t3", "t4"}},
		{`priority != 2`, []string{"t1", "t2"}},
		{`priority < 2 or priority > 2`, []string{"t1", "t2"}},
		{`priority <= 1`, []string{"t2"}},
		{`title prefix "buy"`, []string{"t1", "t3"}},
		{`title contains "ax"`, []string{"t2"}},
		{`tags contains "work"`, []string{"t2"}},
		{`status in ["closed", "gone"]`, []string{"t3"}},
		{`exists(note)`, []string{"t4"}},
		{`note == null`, []string{"t4"}},
		{`not exists(tags)`, []string{"t3", "t4"}},
		{`title > "c"`, []string{"t2", "t4"}},
		{`priority > "a"`, []string{}}, // numbers and strings never order against each other
		{"`title` == \"call mum\"", []string{"t4"}},
		{`tags == ["home"]`, []string{"t1"}},
		{`loc == {"lon": 13.405, "lat": 52.52}`, []string{"t1"}},
		// Berlin to Paris is about 878 km.
		{`within_radius(loc, 52.52, 13.405, 1000)`, []string{"t1"}},
		{`within_radius(loc, 52.52, 13.405, 870000)`, []string{"t1"}},
		{`within_radius(loc, 52.52, 13.405, 890000)`, []string{"t1", "t3"}},
		{`within_bounds(loc, 45, 0, 50, 5)`, []string{"t3"}},
		{`within_bounds(loc, 45, 170, 55, 14)`, []string{"t1", "t3"}}, // crosses the antimeridian
		{`status == "open" or status == "closed"`, []string{"t1", "t2", "t3", "t4"}},
	}
	for _, c := range cases {
		t.Run(c.where, func(t *testing.T) {
			for _, indexed := range []bool{false, true} {
				s := sampleStore()
				ix := s.ix
				if !indexed {
					ix = nil
				}
				q, err := query.FromRequest(events.QueryRequest{Selection: events.Selection{Collection: "c", Where: c.where}})
				if err != nil {
					t.Fatal(err)
				}
				docs, next := q.Page(s, ix)
				if got := ids(docs); !slices.Equal(got, c.want) || next != "" {
					t.Fatalf("indexed=%v: got %v next %q, want %v", indexed, got, next, c.want)
				}
				if n := q.Count(s, ix); n != len(c.want) {
					t.Fatalf("count = %d, want %d", n, len(c.want))
				}
			}
		})
	}
}

func TestBadQueriesNameTheProblem(t *testing.T) {
	cases := map[string]string{
		`priority >= true`:                  "column 1: gte on \"priority\" needs a number or a string, got a boolean",
		`priority ~ 2`:                      "column 10: unexpected character",
		`status = "open"`:                   "column 8: unexpected character",
		`status == "open`:                   "column 11: unterminated string",
		`status == open`:                    "column 11: expected a value",
		`(a == 1`:                           "column 8: expected \")\"",
		`a == 1 b == 2`:                     "column 8: unexpected \"b\"",
		`status in "open"`:                  "in on \"status\" needs an array, got a string",
		`title prefix 3`:                    "prefix on \"title\" needs a string",
		`within_radius(loc, 91, 0, 10)`:     "latitude 91 is outside",
		`within_radius(loc, 0, 0, -1)`:      "radius -1 meters is negative",
		`within_bounds(loc, 10, 0, 5, 1)`:   "minLat 10 is above maxLat 5",
		`within_bounds(loc, 1, 2, 3)`:       "expected \",\"",
		`and == 1`:                          "\"and\" is a keyword",
		``:                                  "column 1: expected a field name, found end of filter",
		`a == [1, 2`:                        "expected \"]\"",
		strings.Repeat("not ", 40) + "a==1": "nests deeper than 32",
	}
	for where, want := range cases {
		_, err := query.Parse(where)
		if !events.IsReason(err, events.ReasonBadQuery) || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want bad_query containing %q", where, err, want)
		}
	}
}

func TestBadFilterTreesAreRefused(t *testing.T) {
	cases := map[string]string{
		`{"op":"like","field":"a","value":1}`:             `at filter: unknown op "like"`,
		`{"op":"and"}`:                                    "and needs at least one arg",
		`{"op":"and","args":[{"op":"eq","field":"a"}]}`:   "at filter.args[0]: eq on \"a\" needs a value",
		`{"op":"eq","feild":"a","value":1}`:               `unknown field "feild"`,
		`{"op":"not","args":[]}`:                          "not takes exactly one arg",
		`{"op":"lt","field":"a","value":[1]}`:             "needs a number or a string, got an array",
		`{"op":"within_radius","field":"a","geo":[1,2]}`:  "needs 3 numbers, got 2",
		`{"op":"exists","field":"a.b"}`:                   "has a control character or '.'",
		`{"op":"eq","field":"a","value":1} {"op":"and"}`:  "trailing data",
		`{"op":"eq","field":"a","value":1,"geo":[1,2,3]}`: "eq takes value, not geo",
	}
	for raw, want := range cases {
		_, err := query.FromSelection(events.Selection{Collection: "c", Filter: json.RawMessage(raw)})
		if !events.IsReason(err, events.ReasonBadQuery) || !strings.Contains(err.Error(), want) {
			t.Errorf("filter %s: %v, want bad_query containing %q", raw, err, want)
		}
	}
}

func TestBadRequestsAreRefused(t *testing.T) {
	cases := map[string]events.QueryRequest{
		"either where or filter": {Selection: events.Selection{Collection: "c", Where: "a == 1", Filter: json.RawMessage(`{"op":"exists","field":"a"}`)}},
		"outside 0 to 1000":      {Selection: events.Selection{Collection: "c"}, Limit: 1001},
		"deleted mode":           {Selection: events.Selection{Collection: "c", Deleted: "sometimes"}},
		"collection":             {Selection: events.Selection{Collection: "a.b"}},
		"cursor is not one":      {Selection: events.Selection{Collection: "c"}, Cursor: "!!"},
		"sort: field name":       {Selection: events.Selection{Collection: "c"}, Sort: []events.SortKey{{Field: ""}}},
	}
	for want, req := range cases {
		_, err := query.FromRequest(req)
		if !events.IsReason(err, events.ReasonBadQuery) || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v, want bad_query containing %q", req, err, want)
		}
	}
}

func TestDeletedModes(t *testing.T) {
	s := sampleStore()
	for mode, want := range map[events.DeletedMode][]string{
		events.ExcludeDeleted: {"t1", "t2", "t3", "t4"},
		events.IncludeDeleted: {"t1", "t2", "t3", "t4", "t5"},
		events.OnlyDeleted:    {"t5"},
	} {
		q, err := query.FromRequest(events.QueryRequest{Selection: events.Selection{Collection: "c", Deleted: mode}})
		if err != nil {
			t.Fatal(err)
		}
		if docs, _ := q.Page(s, s.ix); !slices.Equal(ids(docs), want) {
			t.Errorf("mode %q: %v, want %v", mode, ids(docs), want)
		}
	}
}

// pages walks every page of req and returns the ids in order.
func pages(t *testing.T, s *memStore, req events.QueryRequest) []string {
	t.Helper()
	var out []string
	for range 1000 {
		q, err := query.FromRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		docs, next := q.Page(s, s.ix)
		out = append(out, ids(docs)...)
		if next == "" {
			return out
		}
		req.Cursor = next
	}
	t.Fatal("pagination does not end")
	return nil
}

func TestSortAndPaginate(t *testing.T) {
	s := sampleStore()
	req := events.QueryRequest{Selection: events.Selection{Collection: "c"}, Limit: 1,
		Sort: []events.SortKey{{Field: "priority", Desc: true}, {Field: "title"}}}
	if got, want := pages(t, s, req), []string{"t1", "t3", "t4", "t2"}; !slices.Equal(got, want) {
		t.Fatalf("sorted pages %v, want %v", got, want)
	}
	// Documents without the sort field sort last, in either direction.
	req.Sort = []events.SortKey{{Field: "tags"}}
	req.Limit = 3
	if got, want := pages(t, s, req), []string{"t2", "t1", "t3", "t4"}; !slices.Equal(got, want) {
		t.Fatalf("missing-last pages %v, want %v", got, want)
	}
	// A cursor is tied to its sort.
	q, _ := query.FromRequest(req)
	_, next := q.Page(s, s.ix)
	req.Sort, req.Cursor = nil, next
	if _, err := query.FromRequest(req); !events.IsReason(err, events.ReasonBadQuery) {
		t.Fatalf("cursor reused with another sort: %v", err)
	}
}

// TestIndexAgreesWithScan checks that the index only narrows: random
// documents and eq/in/and/or filters give the same pages with and without
// it, including after documents change.
func TestIndexAgreesWithScan(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := newStore("a", "b")
		values := []string{`1`, `1.0`, `2`, `"x"`, `null`, `[1]`, `{"k":1}`}
		for range rapid.IntRange(0, 40).Draw(t, "writes") {
			id := fmt.Sprintf("d%d", rapid.IntRange(0, 9).Draw(t, "id"))
			fields := map[string]string{}
			for _, f := range []string{"a", "b", "c"} {
				if rapid.Bool().Draw(t, "has "+f) {
					fields[f] = rapid.SampledFrom(values).Draw(t, f)
				}
			}
			var parts []string
			for k, v := range fields {
				parts = append(parts, fmt.Sprintf("%q:%s", k, v))
			}
			s.put(id, "{"+strings.Join(parts, ",")+"}", len(fields) == 0)
		}
		leaf := func(t *rapid.T) string {
			f := rapid.SampledFrom([]string{"a", "b", "c"}).Draw(t, "field")
			if rapid.Bool().Draw(t, "in") {
				return fmt.Sprintf("%s in [%s, %s]", f, rapid.SampledFrom(values).Draw(t, "v1"), rapid.SampledFrom(values).Draw(t, "v2"))
			}
			return fmt.Sprintf("%s == %s", f, rapid.SampledFrom(values).Draw(t, "v"))
		}
		where := fmt.Sprintf("%s %s (%s or %s)", leaf(t), rapid.SampledFrom([]string{"and", "or"}).Draw(t, "join"), leaf(t), leaf(t))
		q, err := query.FromRequest(events.QueryRequest{Selection: events.Selection{Collection: "c", Where: where}, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		withIndex, _ := q.Page(s, s.ix)
		scanned, _ := q.Page(s, nil)
		if !reflect.DeepEqual(ids(withIndex), ids(scanned)) {
			t.Fatalf("%s: index gives %v, scan gives %v", where, ids(withIndex), ids(scanned))
		}
	})
}

func TestParseRoundTrips(t *testing.T) {
	for _, where := range []string{
		`priority >= 2 and status == "open" and not (tags contains "done")`,
		`a == 1 or (b != "x" and c in [1, "two", null])`,
		"`odd name` prefix \"p\" and exists(`in`)",
		`within_radius(loc, 52.5, 13.4, 100) or within_bounds(loc, -1, -2.5, 3, 4e1)`,
	} {
		f, err := query.Parse(where)
		if err != nil {
			t.Fatalf("Parse(%q): %v", where, err)
		}
		again, err := query.Parse(f.String())
		if err != nil || !reflect.DeepEqual(f, again) {
			t.Fatalf("%q -> %q -> %v %v", where, f.String(), again, err)
		}
		raw, _ := json.Marshal(f)
		decoded, err := query.DecodeFilter(raw)
		if err != nil || !reflect.DeepEqual(f, decoded) {
			t.Fatalf("JSON round trip of %q: %s -> %v %v", where, raw, decoded, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`priority >= 2 and status == "open" and not (tags contains "done")`,
		`a in [1, {"b": [true, null]}] or exists(c)`,
		`within_radius(loc, 52.5, 13.4, 100)`,
		"`x y` == -1.5e3",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, where string) {
		flt, err := query.Parse(where)
		if err != nil {
			if !events.IsReason(err, events.ReasonBadQuery) || !strings.Contains(err.Error(), "at ") {
				t.Fatalf("Parse(%q) failed without a bad_query position: %v", where, err)
			}
			return
		}
		// Whatever parses is a checked tree that prints, re-parses and
		// travels as JSON unchanged.
		again, err := query.Parse(flt.String())
		if err != nil || !reflect.DeepEqual(flt, again) {
			t.Fatalf("%q printed as %q re-parses to %v, %v", where, flt.String(), again, err)
		}
		raw, _ := json.Marshal(flt)
		if decoded, err := query.DecodeFilter(raw); err != nil || !reflect.DeepEqual(flt, decoded) {
			t.Fatalf("JSON round trip of %q: %v", where, err)
		}
	})
}

// BenchmarkEqQuery compares an eq query over 100k documents with and
// without an index on the field.
func BenchmarkEqQuery(b *testing.B) {
	s := newStore("status")
	for i := range 100_000 {
		s.put(fmt.Sprintf("d%06d", i), fmt.Sprintf(`{"status":"s%d","n":%d}`, i%1000, i), false)
	}
	q, err := query.FromRequest(events.QueryRequest{Selection: events.Selection{Collection: "c", Where: `status == "s7"`}})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		ix   *query.Index
	}{{"indexed", s.ix}, {"scan", nil}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if docs, _ := q.Page(s, bc.ix); len(docs) != 100 {
					b.Fatalf("%d documents, want 100", len(docs))
				}
			}
		})
	}
}
