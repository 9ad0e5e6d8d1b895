package journal_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	authorityKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	auth         = events.AuthorityIDOf(authorityKey.Public().(ed25519.PublicKey))
	alice        = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	bob          = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	tokenHash    = sha256.Sum256([]byte("token"))
)

// sign builds a real signed fact; fields == nil makes a delete.
func sign(tb testing.TB, device ed25519.PrivateKey, wall uint64, coll, id string, fields map[string]any) *events.Fact {
	tb.Helper()
	body := &eventsv1.FactBody{
		AuthorityKey: authorityKey.Public().(ed25519.PublicKey),
		Hlc:          &eventsv1.HLC{WallMillis: wall},
		Collection:   coll,
		Document:     id,
		TokenHash:    tokenHash[:],
	}
	if fields == nil {
		body.Op = &eventsv1.FactBody_Delete{Delete: &eventsv1.Delete{Reason: "test"}}
	} else {
		raw, _ := json.Marshal(fields)
		body.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: raw}}
	}
	f, err := events.SignFact(device, body)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// publish writes facts to JOURNAL the way the guard does.
func publish(tb testing.TB, js jetstream.JetStream, facts ...*events.Fact) {
	tb.Helper()
	for _, f := range facts {
		msg := nats.NewMsg(events.JournalSubject(f.Authority, f.Collection()))
		msg.Header.Set(events.HeaderMsgID, f.ID.String())
		msg.Data = f.Marshal()
		if _, err := js.PublishMsg(context.Background(), msg); err != nil {
			tb.Fatal(err)
		}
	}
}

func startServer(tb testing.TB, cfg bus.EmbeddedConfig) *bustest.Harness {
	tb.Helper()
	h := bustest.Start(tb, cfg)
	if err := bus.Provision(context.Background(), h.JS, events.JournalStream()); err != nil {
		tb.Fatal(err)
	}
	return h
}

// running is a journal running in the background.
type running struct {
	ready chan struct{}
	stop  func() error
}

// runJournal starts the journal and waits until it is ready.
func runJournal(tb testing.TB, h *bustest.Harness, dataDir string, cfg journal.Config) *running {
	tb.Helper()
	return runJournalWithin(tb, h, dataDir, cfg, 30*time.Second)
}

func runJournalWithin(tb testing.TB, h *bustest.Harness, dataDir string, cfg journal.Config, limit time.Duration) *running {
	tb.Helper()
	r := startJournal(tb, h, dataDir, cfg)
	select {
	case <-r.ready:
	case <-time.After(limit):
		tb.Fatalf("journal did not become ready within %s", limit)
	}
	return r
}

func startJournal(tb testing.TB, h *bustest.Harness, dataDir string, cfg journal.Config) *running {
	tb.Helper()
	return startJournalEnv(tb, &service.Env{Conn: h.Conn, JS: h.JS, Clock: clock.Real{}, DataDir: dataDir}, cfg)
}

// runJournalEnv starts the journal in env and waits until it is ready.
func runJournalEnv(tb testing.TB, h *bustest.Harness, env *service.Env, cfg journal.Config) *running {
	tb.Helper()
	r := startJournalEnv(tb, env, cfg)
	select {
	case <-r.ready:
	case <-time.After(30 * time.Second):
		tb.Fatal("journal did not become ready within 30s")
	}
	return r
}

func startJournalEnv(tb testing.TB, env *service.Env, cfg journal.Config) *running {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{ready: make(chan struct{})}
	env.Ready = sync.OnceFunc(func() { close(r.ready) })
	done := make(chan error, 1)
	go func() { done <- journal.New(cfg).Run(ctx, env) }()
	var once sync.Once
	var err error
	r.stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	tb.Cleanup(func() { _ = r.stop() })
	return r
}

// checkpointPath is where the journal in dir checkpoints auth's partition.
func checkpointPath(dir string, auth events.AuthorityID) string {
	n := journal.DefaultPartitions
	return filepath.Join(dir, "partitions", fmt.Sprintf("%d-of-%d", journal.PartitionOf(auth, n), n), "checkpoint")
}

// foldedFacts reads the sum of factsync.journal.facts.folded.
func foldedFacts(tb testing.TB, reader *sdkmetric.ManualReader) int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		tb.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "factsync.journal.facts.folded" {
				for _, dp := range sum.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n
}

// request sends a journal request and decodes the reply or the error.
func request(tb testing.TB, nc *nats.Conn, op string, req, reply any) *events.Error {
	tb.Helper()
	body, _ := json.Marshal(req)
	return requestRaw(tb, nc, op, body, reply)
}

func requestRaw(tb testing.TB, nc *nats.Conn, op string, body []byte, reply any) *events.Error {
	tb.Helper()
	m, err := nc.Request(events.ServiceSubject(events.JournalProto, op, auth), body, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	if e := events.DecodeError(m.Data); e != nil {
		if m.Header.Get(events.HeaderReason) != string(e.Reason) {
			tb.Fatalf("error reply header %q, body reason %q", m.Header.Get(events.HeaderReason), e.Reason)
		}
		return e
	}
	if err := json.Unmarshal(m.Data, reply); err != nil {
		tb.Fatal(err)
	}
	return nil
}

// eventually polls cond until it holds or the deadline passes.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func get(tb testing.TB, nc *nats.Conn, coll, id string) (events.Document, *events.Error) {
	var reply events.GetReply
	err := request(tb, nc, events.OpGet, events.GetRequest{Collection: coll, ID: id, IncludeDeleted: true}, &reply)
	return reply.Document, err
}

func TestFoldsServesAndAnnounces(t *testing.T) {
	h := startServer(t, bus.EmbeddedConfig{})
	changes := make(chan events.Change, 100)
	sub, err := h.Conn.Subscribe(events.ChangesPrefix+".>", func(m *nats.Msg) {
		c, err := events.DecodeChange(m.Data)
		if err == nil && m.Subject == events.ChangesSubject(c.Authority, c.Document.Collection, c.Document.ID) {
			changes <- c
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	runJournal(t, h, t.TempDir(), journal.Config{Indexes: map[string][]string{"tasks": {"status"}}})

	// Two devices edit different fields of t1 at the same instant, and
	// the same field of t2: both t1 edits survive, t2 has one winner.
	t1a := sign(t, alice, 1000, "tasks", "t1", map[string]any{"title": "buy milk", "priority": 3, "status": "open"})
	t1b := sign(t, bob, 1000, "tasks", "t1", map[string]any{"tags": []string{"home"}})
	t2a := sign(t, alice, 1000, "tasks", "t2", map[string]any{"title": "alice's", "status": "open", "priority": 1})
	t2b := sign(t, bob, 1000, "tasks", "t2", map[string]any{"title": "bob's"})
	t3 := sign(t, alice, 1000, "tasks", "t3", map[string]any{"title": "gone", "status": "open"})
	t3del := sign(t, bob, 2000, "tasks", "t3", nil)
	publish(t, h.JS, t1a, t1b, t2a, t2b, t3, t3del)

	eventually(t, "t3 deleted", func() bool { d, err := get(t, h.Conn, "tasks", "t3"); return err == nil && d.Deleted })
	d, _ := get(t, h.Conn, "tasks", "t1")
	if string(d.Fields["title"]) != `"buy milk"` || string(d.Fields["tags"]) != `["home"]` {
		t.Fatalf("t1 lost an edit: %s", d.Fields)
	}
	wantTitle := `"alice's"`
	if t2b.ID.Compare(t2a.ID) > 0 {
		wantTitle = `"bob's"`
	}
	if d, _ := get(t, h.Conn, "tasks", "t2"); string(d.Fields["title"]) != wantTitle {
		t.Fatalf("t2 title %s, want %s", d.Fields["title"], wantTitle)
	}
	if err := request(t, h.Conn, events.OpGet, events.GetRequest{Collection: "tasks", ID: "t3"}, &events.GetReply{}); err == nil || err.Reason != events.ReasonNotFound {
		t.Fatalf("get of a deleted document without include_deleted: %v", err)
	}

	var page events.QueryReply
	if err := request(t, h.Conn, events.OpQuery, events.QueryRequest{
		Selection: events.Selection{Collection: "tasks", Where: `status == "open" and priority >= 2`}}, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Documents) != 1 || page.Documents[0].ID != "t1" || page.Seq != 6 {
		t.Fatalf("query: %+v", page)
	}
	var count events.CountReply
	if err := request(t, h.Conn, events.OpCount, events.CountRequest{
		Selection: events.Selection{Collection: "tasks", Deleted: events.IncludeDeleted}}, &count); err != nil || count.Count != 3 {
		t.Fatalf("count = %+v, %v", count, err)
	}
	// Pages with a sort and a cursor.
	var ids []string
	req := events.QueryRequest{Selection: events.Selection{Collection: "tasks"}, Sort: []events.SortKey{{Field: "priority", Desc: true}}, Limit: 1}
	for {
		var page events.QueryReply
		if err := request(t, h.Conn, events.OpQuery, req, &page); err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Documents {
			ids = append(ids, d.ID)
		}
		if req.Cursor = page.NextCursor; req.Cursor == "" {
			break
		}
	}
	if fmt.Sprint(ids) != "[t1 t2]" {
		t.Fatalf("paged ids %v", ids)
	}

	// Every fact here changed something visible: six changes, in order,
	// the last one the delete.
	var got []events.Change
	eventually(t, "six changes", func() bool {
		for {
			select {
			case c := <-changes:
				got = append(got, c)
			default:
				return len(got) >= 6
			}
		}
	})
	last := got[len(got)-1]
	if len(got) != 6 || last.Fact != t3del.ID.String() || !last.Document.Deleted || last.Seq != 6 || last.Authority != auth {
		t.Fatalf("changes: %+v", got)
	}
}

func TestBadRequestsGetReasons(t *testing.T) {
	h := startServer(t, bus.EmbeddedConfig{})
	runJournal(t, h, t.TempDir(), journal.Config{})
	publish(t, h.JS, sign(t, alice, 1000, "tasks", "t1", map[string]any{"n": 1}))
	cases := []struct {
		op, body string
		reason   events.Reason
		detail   string
	}{
		{events.OpQuery, `{"collection":"tasks","where":"n ~ 1"}`, events.ReasonBadQuery, "at column 3"},
		{events.OpQuery, `{"collection":"tasks","where":"n >= true"}`, events.ReasonBadQuery, "needs a number or a string"},
		{events.OpCount, `{"collection":"tasks","filter":{"op":"like","field":"n","value":1}}`, events.ReasonBadQuery, `unknown op "like"`},
		{events.OpQuery, `{"collection":"tasks","wher":"n == 1"}`, events.ReasonMalformed, `unknown field "wher"`},
		{events.OpQuery, `not json`, events.ReasonMalformed, "not the expected JSON"},
		{events.OpGet, `{"collection":"tasks","id":"nope"}`, events.ReasonNotFound, "tasks/nope does not exist"},
		{events.OpGet, `{"collection":"a.b","id":"x"}`, events.ReasonMalformed, "collection"},
	}
	for _, c := range cases {
		err := requestRaw(t, h.Conn, c.op, []byte(c.body), &json.RawMessage{})
		if err == nil || err.Reason != c.reason || !bytes.Contains([]byte(err.Detail), []byte(c.detail)) {
			t.Errorf("%s %s: %v, want %s containing %q", c.op, c.body, err, c.reason, c.detail)
		}
	}
}

func TestRestartResumesFromCheckpoint(t *testing.T) {
	h := startServer(t, bus.EmbeddedConfig{})
	dir := t.TempDir()
	j := runJournal(t, h, dir, journal.Config{})
	for i := range 20 {
		publish(t, h.JS, sign(t, alice, uint64(1000+i), "tasks", fmt.Sprintf("d%d", i), map[string]any{"n": i}))
	}
	eventually(t, "20 documents", func() bool {
		var c events.CountReply
		return request(t, h.Conn, events.OpCount, events.CountRequest{Selection: events.Selection{Collection: "tasks"}}, &c) == nil && c.Count == 20
	})
	if err := j.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(checkpointPath(dir, auth)); err != nil {
		t.Fatalf("no checkpoint after a clean stop: %v", err)
	}
	// Facts that arrive while the journal is down are folded on restart,
	// and only they are: the consumer starts after the checkpoint.
	publish(t, h.JS, sign(t, bob, 5000, "tasks", "d0", map[string]any{"n": "changed"}), sign(t, bob, 5000, "tasks", "late", map[string]any{"n": 1}))
	metrics := sdkmetric.NewManualReader()
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(metrics)).Meter(journal.Name)
	runJournalEnv(t, h, &service.Env{Conn: h.Conn, JS: h.JS, Clock: clock.Real{}, DataDir: dir, Meter: meter}, journal.Config{})
	if n := foldedFacts(t, metrics); n != 2 {
		t.Fatalf("restart folded %d facts, want the 2 after the checkpoint", n)
	}
	var c events.CountReply
	if err := request(t, h.Conn, events.OpCount, events.CountRequest{Selection: events.Selection{Collection: "tasks"}}, &c); err != nil || c.Count != 21 {
		t.Fatalf("after restart: count %+v, %v", c, err)
	}
	if d, _ := get(t, h.Conn, "tasks", "d0"); string(d.Fields["n"]) != `"changed"` {
		t.Fatalf("d0 after restart: %s", d.Fields)
	}
}

func TestDamagedOrForeignCheckpointIsRebuilt(t *testing.T) {
	h := startServer(t, bus.EmbeddedConfig{})
	dir := t.TempDir()
	publish(t, h.JS, sign(t, alice, 1000, "tasks", "a", map[string]any{"n": 1}))
	j := runJournal(t, h, dir, journal.Config{})
	if err := j.stop(); err != nil {
		t.Fatal(err)
	}
	path := checkpointPath(dir, auth)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	j = runJournal(t, h, dir, journal.Config{})
	if d, err := get(t, h.Conn, "tasks", "a"); err != nil || string(d.Fields["n"]) != "1" {
		t.Fatalf("after a damaged checkpoint: %+v %v", d, err)
	}
	if err := j.stop(); err != nil {
		t.Fatal(err)
	}

	// A JOURNAL recreated from scratch does not inherit the checkpoint.
	if err := h.JS.DeleteStream(context.Background(), events.StreamJournal); err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(context.Background(), h.JS, events.JournalStream()); err != nil {
		t.Fatal(err)
	}
	publish(t, h.JS, sign(t, alice, 1000, "tasks", "b", map[string]any{"n": 2}))
	runJournal(t, h, dir, journal.Config{})
	if _, err := get(t, h.Conn, "tasks", "a"); err == nil || err.Reason != events.ReasonNotFound {
		t.Fatalf("a document of the old stream survived: %v", err)
	}
	if _, err := get(t, h.Conn, "tasks", "b"); err != nil {
		t.Fatalf("b: %v", err)
	}
}

func TestRedeliveredFactIsHarmless(t *testing.T) {
	h := startServer(t, bus.EmbeddedConfig{})
	changes := make(chan *nats.Msg, 10)
	sub, err := h.Conn.ChanSubscribe(events.ChangesPrefix+".>", changes)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	runJournal(t, h, t.TempDir(), journal.Config{})
	f := sign(t, alice, 1000, "tasks", "a", map[string]any{"n": 1})
	publish(t, h.JS, f)
	// The same fact again under another message id, as if it came back
	// after the dedup window: folded again, it changes nothing.
	msg := nats.NewMsg(events.JournalSubject(f.Authority, f.Collection()))
	msg.Header.Set(events.HeaderMsgID, "again")
	msg.Data = f.Marshal()
	if _, err := h.JS.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	marker := sign(t, alice, 2000, "tasks", "marker", map[string]any{"n": 1})
	publish(t, h.JS, marker)
	var subjects []string
	eventually(t, "the marker's change", func() bool {
		for {
			select {
			case m := <-changes:
				subjects = append(subjects, m.Subject)
			default:
				return len(subjects) > 0 && subjects[len(subjects)-1] == events.ChangesSubject(auth, "tasks", "marker")
			}
		}
	})
	if len(subjects) != 2 {
		t.Fatalf("changes %v: the repeated fact was announced again", subjects)
	}
}

// Run alone (its own process), the journal may start before the guard has
// created JOURNAL: it waits for the stream instead of failing.
func TestRunWaitsForJournalStream(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	ready := make(chan struct{})
	env := &service.Env{Conn: h.Conn, JS: h.JS, Clock: clk, DataDir: t.TempDir(), Ready: func() { close(ready) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- journal.New(journal.Config{}).Run(ctx, env) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	eventually(t, "the journal waits on the clock for JOURNAL", func() bool { return clk.Waiters() > 0 })
	select {
	case <-ready:
		t.Fatal("journal became ready without JOURNAL")
	default:
	}
	if _, err := h.JS.CreateStream(ctx, events.JournalStream()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("journal not ready 30s after JOURNAL was created")
	}
}

func TestSkipsMessagesThatAreNotAcceptedFacts(t *testing.T) {
	h := startServer(t, bus.EmbeddedConfig{})
	runJournal(t, h, t.TempDir(), journal.Config{})
	if _, err := h.JS.Publish(context.Background(), events.JournalSubject(auth, "tasks"), []byte("not a fact")); err != nil {
		t.Fatal(err)
	}
	// A real fact on another collection's subject is not where the guard
	// would have put it.
	misfiled := sign(t, alice, 1000, "notes", "n1", map[string]any{"n": 1})
	if _, err := h.JS.Publish(context.Background(), events.JournalSubject(auth, "tasks"), misfiled.Marshal()); err != nil {
		t.Fatal(err)
	}
	publish(t, h.JS, sign(t, alice, 1000, "tasks", "ok", map[string]any{"n": 1}))
	eventually(t, "the good fact", func() bool { _, err := get(t, h.Conn, "tasks", "ok"); return err == nil })
	if _, err := get(t, h.Conn, "notes", "n1"); err == nil || err.Reason != events.ReasonNotFound {
		t.Fatalf("a misfiled fact was folded: %v", err)
	}
}
