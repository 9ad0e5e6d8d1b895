package sdktest

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/shared/query"
)

const coll = "tasks"

func field(t *testing.T, d sdk.Document, name string) any {
	t.Helper()
	raw, ok := d.Fields[name]
	if !ok {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("field %s of %s is not JSON: %v", name, d.ID, err)
	}
	return v
}

func mustUpsert(t *testing.T, s Setup, c sdk.DataSyncBackend, id string, fields any) sdk.WriteResult {
	t.Helper()
	res, err := c.DocumentStore().Upsert(ctxFor(t, s), coll, id, fields)
	if err != nil {
		t.Fatalf("upsert %s: %v", id, err)
	}
	return res
}

func testLifecycle(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, nil)[0]
	if !c.IsReady() {
		t.Fatal("an initialized backend must be ready")
	}
	info := c.Info()
	if info.Name == "" || info.Authority == "" || info.Device == "" {
		t.Fatalf("info %+v lacks name, authority or device", info)
	}
	if err := c.Initialize(ctxFor(t, s), sdk.Config{}); err == nil {
		t.Fatal("initializing twice must fail")
	}
	ctx := ctxFor(t, s)
	obs, err := c.DocumentStore().Observe(ctx, coll, sdk.Query{})
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, s, obs)
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if c.IsReady() {
		t.Fatal("a shut-down backend must not be ready")
	}
	if _, err := c.DocumentStore().Get(ctx, coll, "x"); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("get after shutdown: %v, want unavailable", err)
	}
	for range obs.Events() {
	}
	if obs.Err() == nil {
		t.Fatal("shutdown must end observations with a reason")
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatalf("a second shutdown must be harmless: %v", err)
	}
}

func testUpsertGet(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, nil)[0]
	ctx := ctxFor(t, s)
	first := mustUpsert(t, s, c, "t1", map[string]any{"title": "write suite", "priority": 2})
	if first.ID != "t1" {
		t.Fatalf("upsert returned id %q, want t1", first.ID)
	}
	mustUpsert(t, s, c, "t1", json.RawMessage(`{"status":"open","priority":3}`))
	d, err := c.DocumentStore().Get(ctx, coll, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if field(t, d, "title") != "write suite" || field(t, d, "status") != "open" || field(t, d, "priority") != 3.0 {
		t.Fatalf("document fields %s, want the merge of both upserts", fmtFields(d))
	}
	if d.Collection != coll || d.ID != "t1" || d.Deleted || d.Version.IsZero() {
		t.Fatalf("document header %+v is wrong", d)
	}
	if _, err := c.DocumentStore().Get(ctx, coll, "missing"); !events.IsReason(err, events.ReasonNotFound) {
		t.Fatalf("get of a missing document: %v, want not_found", err)
	}
}

func fmtFields(d sdk.Document) string {
	b, _ := json.Marshal(d.Fields)
	return string(b)
}

func testUpsertGeneratesIDs(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, nil)[0]
	a := mustUpsert(t, s, c, "", map[string]any{"n": 1})
	b := mustUpsert(t, s, c, "", map[string]any{"n": 2})
	if a.ID == "" || a.ID == b.ID || !events.ValidName(a.ID) {
		t.Fatalf("generated ids %q and %q must be fresh valid names", a.ID, b.ID)
	}
	d, err := c.DocumentStore().Get(ctxFor(t, s), coll, b.ID)
	if err != nil || field(t, d, "n") != 2.0 {
		t.Fatalf("get generated %s: %v %s", b.ID, err, fmtFields(d))
	}
}

func testRefusesBadInput(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, nil)[0]
	ctx := ctxFor(t, s)
	st := c.DocumentStore()
	cases := []struct {
		name string
		err  error
		want events.Reason
	}{
		{"bad collection", first(st.Upsert(ctx, "no.dots", "x", map[string]any{"a": 1})), events.ReasonMalformed},
		{"bad id", first(st.Upsert(ctx, coll, "a b", map[string]any{"a": 1})), events.ReasonMalformed},
		{"no fields", first(st.Upsert(ctx, coll, "x", map[string]any{})), events.ReasonMalformed},
		{"fields not an object", first(st.Upsert(ctx, coll, "x", []int{1})), events.ReasonMalformed},
		{"bad where", first(st.Query(ctx, coll, sdk.Query{Where: "priority >>= 2"})), events.ReasonBadQuery},
		{"where and filter", first(st.Query(ctx, coll, sdk.Query{Where: "a == 1", Filter: &query.Filter{Op: query.Exists, Field: "a"}})), events.ReasonBadQuery},
		{"bad deleted mode", first(st.Query(ctx, coll, sdk.Query{Deleted: "sometimes"})), events.ReasonBadQuery},
		{"observe with limit", first(st.Observe(ctx, coll, sdk.Query{Limit: 3})), events.ReasonBadQuery},
	}
	for _, tc := range cases {
		if !events.IsReason(tc.err, tc.want) {
			t.Errorf("%s: got %v, want reason %s", tc.name, tc.err, tc.want)
		}
	}
}

func first[T any](_ T, err error) error { return err }

func testDelete(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, nil)[0]
	ctx := ctxFor(t, s)
	st := c.DocumentStore()
	mustUpsert(t, s, c, "d1", map[string]any{"a": 1, "b": 2})
	if _, err := st.Delete(ctx, coll, "d1", "obsolete"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, coll, "d1"); !events.IsReason(err, events.ReasonNotFound) {
		t.Fatalf("get after delete: %v, want not_found", err)
	}
	page, err := st.Query(ctx, coll, sdk.Query{})
	if err != nil || len(page.Documents) != 0 {
		t.Fatalf("default query after delete: %d docs, %v; want none", len(page.Documents), err)
	}
	page, err = st.Query(ctx, coll, sdk.Query{Deleted: events.OnlyDeleted})
	if err != nil || len(page.Documents) != 1 || !page.Documents[0].Deleted {
		t.Fatalf("deleted-only query: %+v, %v; want d1 marked deleted", page.Documents, err)
	}
	mustUpsert(t, s, c, "d1", map[string]any{"b": 3})
	d, err := st.Get(ctx, coll, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if _, stale := d.Fields["a"]; stale || field(t, d, "b") != 3.0 || d.Deleted {
		t.Fatalf("revived document %s must have only the new field", fmtFields(d))
	}
}

func seedTasks(t *testing.T, s Setup, c sdk.DataSyncBackend, n int) {
	t.Helper()
	for i := range n {
		mustUpsert(t, s, c, fmt.Sprintf("t%02d", i), map[string]any{
			"priority": i % 4,
			"status":   []string{"open", "done"}[i%2],
			"tags":     []string{fmt.Sprintf("g%d", i%3)},
		})
	}
}

func ids(docs []sdk.Document) []string {
	out := []string{}
	for _, d := range docs {
		out = append(out, d.ID)
	}
	return out
}

func testQuery(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, nil)[0]
	ctx := ctxFor(t, s)
	st := c.DocumentStore()
	seedTasks(t, s, c, 12)

	page, err := st.Query(ctx, coll, sdk.Query{Where: `priority >= 2 and status == "open"`})
	if err != nil {
		t.Fatal(err)
	}
	// open tasks are the even ones; priority i%4 >= 2 among them: i%4 == 2.
	if want := []string{"t02", "t06", "t10"}; !slices.Equal(ids(page.Documents), want) {
		t.Fatalf("where query gave %v, want %v", ids(page.Documents), want)
	}

	tree := &query.Filter{Op: query.Contains, Field: "tags", Value: json.RawMessage(`"g1"`)}
	page, err = st.Query(ctx, coll, sdk.Query{Filter: tree, Sort: []events.SortKey{{Field: "priority", Desc: true}}})
	if err != nil {
		t.Fatal(err)
	}
	// g1: i%3 == 1 -> t01 (p1), t04 (p0), t07 (p3), t10 (p2); by priority desc.
	if want := []string{"t07", "t10", "t01", "t04"}; !slices.Equal(ids(page.Documents), want) {
		t.Fatalf("filter query sorted by priority desc gave %v, want %v", ids(page.Documents), want)
	}

	var paged []string
	pages := 0
	q := sdk.Query{Limit: 5}
	for {
		p, err := st.Query(ctx, coll, q)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		paged = append(paged, ids(p.Documents)...)
		if p.NextCursor == "" {
			break
		}
		q.Cursor = p.NextCursor
	}
	if pages != 3 || !slices.IsSorted(paged) || len(slices.Compact(slices.Clone(paged))) != 12 {
		t.Fatalf("paging by 5 gave %d pages: %v", pages, paged)
	}
	var all []string
	for d, err := range sdk.All(ctx, st, coll, sdk.Query{Limit: 4, Where: `status == "done"`}) {
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, d.ID)
	}
	if want := []string{"t01", "t03", "t05", "t07", "t09", "t11"}; !slices.Equal(all, want) {
		t.Fatalf("All over pages of 4 gave %v, want %v", all, want)
	}
}

func testCount(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, nil)[0]
	ctx := ctxFor(t, s)
	seedTasks(t, s, c, 8)
	if _, err := c.DocumentStore().Delete(ctx, coll, "t00", "gone"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		q    sdk.Query
		want int
	}{
		{sdk.Query{}, 7},
		{sdk.Query{Where: `status == "open"`}, 3},
		{sdk.Query{Deleted: events.IncludeDeleted}, 8},
		{sdk.Query{Deleted: events.OnlyDeleted}, 1},
	} {
		n, err := c.DocumentStore().Count(ctx, coll, tc.q)
		if err != nil || n != tc.want {
			t.Errorf("count %+v = %d, %v; want %d", tc.q, n, err, tc.want)
		}
	}
}

func testApply(t *testing.T, s Setup) {
	c := s.NewClients(t, 1, nil)[0]
	ctx := ctxFor(t, s)
	var writes []sdk.Write
	for i := range 20 {
		w, err := sdk.UpsertWrite(coll, fmt.Sprintf("b%02d", i), map[string]any{"i": i})
		if err != nil {
			t.Fatal(err)
		}
		writes = append(writes, w)
	}
	writes = append(writes, sdk.DeleteWrite(coll, "b00", "batch delete"))
	res, err := c.DocumentStore().Apply(ctx, writes...)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(writes) || res[3].ID != "b03" {
		t.Fatalf("apply returned %d results, want %d in order", len(res), len(writes))
	}
	n, err := c.DocumentStore().Count(ctx, coll, sdk.Query{})
	if err != nil || n != 19 {
		t.Fatalf("after a batch of 20 puts and a delete: %d documents, %v; want 19", n, err)
	}
}
