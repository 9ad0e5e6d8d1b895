package bus_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testStream(name, subject string) jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: name, Subjects: []string{subject}, Storage: jetstream.FileStorage}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// runRouter runs r until the test ends and fails the test if Run errs.
func runRouter(t *testing.T, r *bus.Router) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
	})
	select {
	case <-r.Running():
	case err := <-done:
		t.Fatalf("router stopped before running: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("router not running after 10s")
	}
}

func TestTraceCrossesServicesOverJetStream(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	ctx := ctxT(t)
	if err := bus.Provision(ctx, h.JS, testStream("WORK", "work.>")); err != nil {
		t.Fatal(err)
	}
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	consumerConn := bustest.Connect(t, h.URL())
	router, err := bus.NewRouter(ctx, bus.RouterConfig{Service: "journal", Conn: consumerConn, Tracer: tp.Tracer("journal")})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan trace.SpanContext, 1)
	if err := router.Handle("journal", "work.>", func(msg *message.Message) error {
		if s := msg.Metadata.Get(bus.MetadataSubject); s != "work.item" {
			t.Errorf("handler saw subject %q, want work.item", s)
		}
		got <- trace.SpanContextFromContext(msg.Context())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	runRouter(t, router)

	pub, err := bus.NewPublisher(h.Conn, tp.Tracer("guard"), nil)
	if err != nil {
		t.Fatal(err)
	}
	opCtx, op := tp.Tracer("guard").Start(context.Background(), "accept fact")
	msg := message.NewMessage("m1", []byte("hello"))
	msg.SetContext(opCtx)
	if err := pub.Publish("work.item", msg); err != nil {
		t.Fatal(err)
	}
	op.End()

	var consumed trace.SpanContext
	select {
	case consumed = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("message not consumed within 10s")
	}
	if consumed.TraceID() != op.SpanContext().TraceID() {
		t.Fatalf("consumer trace id %s, want producer's %s", consumed.TraceID(), op.SpanContext().TraceID())
	}
	var send, process tracetest.SpanStub
	deadline := time.Now().Add(5 * time.Second)
	for process.Name == "" && time.Now().Before(deadline) {
		for _, s := range spans.GetSpans() {
			switch s.SpanKind {
			case trace.SpanKindProducer:
				send = s
			case trace.SpanKindConsumer:
				process = s
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if process.Name == "" || send.Name == "" {
		t.Fatalf("want a producer and a consumer span, got %d spans", len(spans.GetSpans()))
	}
	if process.Parent.SpanID() != send.SpanContext.SpanID() {
		t.Fatalf("consumer span's parent %s, want the send span %s", process.Parent.SpanID(), send.SpanContext.SpanID())
	}
	if process.SpanContext.SpanID() != consumed.SpanID() {
		t.Fatalf("handler context is not inside the consumer span")
	}
}

func TestFailingMessageGoesToPoisonQueue(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	ctx := ctxT(t)
	if err := bus.Provision(ctx, h.JS, testStream("WORK", "work.>")); err != nil {
		t.Fatal(err)
	}
	router, err := bus.NewRouter(ctx, bus.RouterConfig{Service: "snapshot", Conn: bustest.Connect(t, h.URL()), MaxRetries: 2, RetryInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	attempts := 0
	if err := router.Handle("snapshot-cuts", "work.>", func(*message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		attempts++
		return events.Errorf(events.ReasonMalformed, "cannot decode")
	}); err != nil {
		t.Fatal(err)
	}
	runRouter(t, router)
	if _, err := h.JS.Publish(ctx, "work.bad", []byte("junk")); err != nil {
		t.Fatal(err)
	}
	poison, err := h.JS.Stream(ctx, events.StreamPoison)
	if err != nil {
		t.Fatal(err)
	}
	var got *jetstream.RawStreamMsg
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got, err = poison.GetLastMsgForSubject(ctx, events.PoisonSubject("snapshot")); err == nil {
			break
		}
	}
	if got == nil {
		t.Fatalf("nothing on %s: %v", events.PoisonSubject("snapshot"), err)
	}
	if string(got.Data) != "junk" || got.Header.Get(bus.MetadataSubject) != "work.bad" {
		t.Fatalf("poisoned message %q from %q, want the original", got.Data, got.Header.Get(bus.MetadataSubject))
	}
	if reason := got.Header.Get(middleware.ReasonForPoisonedKey); !strings.Contains(reason, "cannot decode") {
		t.Fatalf("poison reason %q does not carry the handler's error", reason)
	}
	mu.Lock()
	defer mu.Unlock()
	if attempts != 3 {
		t.Fatalf("handler ran %d times, want 1 + 2 retries", attempts)
	}
	// The original is acked, so the durable consumer has nothing pending.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		info, err := h.JS.Consumer(ctx, "WORK", "snapshot-cuts")
		if err != nil {
			t.Fatal(err)
		}
		ci, err := info.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ci.NumAckPending == 0 && ci.NumPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer still has %d unacked, %d pending", ci.NumAckPending, ci.NumPending)
		}
	}
}

func TestConsumerMustBeNamedAfterService(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	router, err := bus.NewRouter(ctxT(t), bus.RouterConfig{Service: "journal", Conn: h.Conn})
	if err != nil {
		t.Fatal(err)
	}
	if err := router.Handle("guard", "work.>", func(*message.Message) error { return nil }); err == nil {
		t.Fatal("a journal router accepted a consumer named guard")
	}
}

func TestRouterWithoutHandlersStopsOnCancel(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	router, err := bus.NewRouter(ctxT(t), bus.RouterConfig{Service: "ota", Conn: h.Conn})
	if err != nil {
		t.Fatal(err)
	}
	runRouter(t, router) // its cleanup cancels and waits for Run
}

func TestAcknowledgedMessagesSurviveRestart(t *testing.T) {
	ctx := ctxT(t)
	h := bustest.Start(t, bus.EmbeddedConfig{})
	if err := bus.Provision(ctx, h.JS, testStream("DURABLE", "durable.>")); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		// Publish returns only once the stream has acknowledged (and,
		// by default, fsynced) the message.
		if _, err := h.JS.Publish(ctx, "durable.x", fmt.Appendf(nil, "fact-%d", i)); err != nil {
			t.Fatal(err)
		}
	}

	h = h.Restart(t)
	stream, err := h.JS.Stream(ctx, "DURABLE")
	if err != nil {
		t.Fatalf("stream gone after restart: %v", err)
	}
	if got := stream.CachedInfo().State.Msgs; got != n {
		t.Fatalf("%d messages after restart, want %d", got, n)
	}
	for i := range n {
		m, err := stream.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("fact-%d", i); string(m.Data) != want {
			t.Fatalf("message %d is %q, want %q", i+1, m.Data, want)
		}
	}
}

func TestProvisionIsIdempotentAndExplainsConflicts(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	ctx := ctxT(t)
	cfg := testStream("ORDERS", "orders.>")
	for range 2 {
		if err := bus.Provision(ctx, h.JS, cfg); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Retention = jetstream.WorkQueuePolicy
	err := bus.Provision(ctx, h.JS, cfg)
	if !events.IsReason(err, events.ReasonConflict) || !strings.Contains(err.Error(), "retention") || !strings.Contains(err.Error(), "ORDERS") {
		t.Fatalf("want a conflict naming ORDERS and retention, got %v", err)
	}
	if _, err := bus.ProvisionKV(ctx, h.JS, jetstream.KeyValueConfig{Bucket: "cfg"}, jetstream.KeyValueConfig{Bucket: "cfg"}); err != nil {
		t.Fatal(err)
	}
}

func TestHeaderCarrierKeepsW3CCase(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "op")
	defer span.End()

	h := nats.Header{}
	bus.InjectTrace(ctx, h)
	if h.Get("traceparent") == "" {
		t.Fatalf("traceparent not written in lower case: %v", h)
	}
	if got := trace.SpanContextFromContext(bus.ExtractTrace(context.Background(), h)); got.TraceID() != span.SpanContext().TraceID() {
		t.Fatalf("extracted trace %s, want %s", got.TraceID(), span.SpanContext().TraceID())
	}
	// A producer that used the net/http carrier canonicalised the key.
	canon := nats.Header{}
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(canon))
	if canon.Get("traceparent") != "" {
		t.Fatal("expected the stock carrier to canonicalise; test premise broken")
	}
	if got := trace.SpanContextFromContext(bus.ExtractTrace(context.Background(), canon)); got.TraceID() != span.SpanContext().TraceID() {
		t.Fatal("carrier does not read a canonicalised Traceparent")
	}
	if got := bus.ExtractTrace(context.Background(), nil); trace.SpanContextFromContext(got).IsValid() {
		t.Fatal("nil header produced a span context")
	}
}

// A trace context carried in a message body comes back as the same span
// context, tracestate included, and baggage does not travel with it.
func TestBodyTraceRoundTrip(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "op")
	defer span.End()
	state, err := trace.ParseTraceState("factsync=1")
	if err != nil {
		t.Fatal(err)
	}
	want := span.SpanContext().WithTraceState(state)
	ctx = trace.ContextWithSpanContext(ctx, want)
	member, _ := baggage.NewMember("user", "secret")
	bag, _ := baggage.New(member)
	ctx = baggage.ContextWithBaggage(ctx, bag)

	tc := bus.BodyTrace(ctx)
	if tc.GetTraceparent() == "" || tc.GetTracestate() != "factsync=1" {
		t.Fatalf("body trace %v, want the span's traceparent and tracestate factsync=1", tc)
	}
	got := bus.ExtractBodyTrace(context.Background(), tc)
	sc := trace.SpanContextFromContext(got)
	if !sc.IsRemote() || sc.TraceID() != want.TraceID() || sc.SpanID() != want.SpanID() || !sc.IsSampled() || sc.TraceState().String() != "factsync=1" {
		t.Fatalf("extracted %v, want remote %v", sc, want)
	}
	if baggage.FromContext(got).Len() != 0 {
		t.Fatal("baggage crossed in the body trace")
	}
	for _, empty := range []*eventsv1.TraceContext{nil, {}, {Traceparent: "not a traceparent"}} {
		if trace.SpanContextFromContext(bus.ExtractBodyTrace(context.Background(), empty)).IsValid() {
			t.Fatalf("%v produced a span context", empty)
		}
	}
	if bus.BodyTrace(context.Background()) != nil {
		t.Fatal("a context without a span has a body trace")
	}
}

// Items of one trace go together, in first-appearance order; items with
// no context, a malformed one or an unsampled one form the first group,
// with no context, and so does an item whose context is only the one of
// the ctx it was extracted onto.
func TestGroupByTrace(t *testing.T) {
	sampled := sdktrace.NewTracerProvider().Tracer("t")
	unsampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample())).Tracer("t")
	ctxA, a := sampled.Start(context.Background(), "a")
	ctxB, b := sampled.Start(context.Background(), "b")
	ctxU, u := unsampled.Start(context.Background(), "u")
	for _, s := range []trace.Span{a, b, u} {
		s.End()
	}
	session, sess := sampled.Start(context.Background(), "session")
	defer sess.End()
	items := []*eventsv1.TraceContext{bus.BodyTrace(ctxA), nil, bus.BodyTrace(ctxB), bus.BodyTrace(ctxU), bus.BodyTrace(ctxA), {Traceparent: "00-garbage"}, {}}
	bare := bus.WithoutSpan(session)
	groups := bus.GroupByTrace(len(items)+1, func(i int) context.Context {
		if i == len(items) {
			return bare // an item past the carried list
		}
		return bus.ExtractBodyTrace(bare, items[i])
	})
	want := []struct {
		span  trace.Span
		items []int
	}{{nil, []int{1, 3, 5, 6, 7}}, {a, []int{0, 4}}, {b, []int{2}}}
	if len(groups) != len(want) {
		t.Fatalf("%d groups, want %d: %+v", len(groups), len(want), groups)
	}
	for i, w := range want {
		g := groups[i]
		if !slices.Equal(g.Items, w.items) {
			t.Errorf("group %d holds %v, want %v", i, g.Items, w.items)
		}
		if w.span == nil {
			if g.Context != nil {
				t.Errorf("group %d has a context, want none", i)
			}
			continue
		}
		if sc := trace.SpanContextFromContext(g.Context); !sc.IsRemote() || sc.SpanID() != w.span.SpanContext().SpanID() {
			t.Errorf("group %d's context %v, want remote %v", i, sc, w.span.SpanContext())
		}
	}
	if len(bus.GroupByTrace(0, nil)) != 0 {
		t.Error("an empty batch has groups")
	}
}

func TestConnectWithCredentialFiles(t *testing.T) {
	ctx := ctxT(t)
	user, _ := nkeys.CreateUser()
	seed, _ := user.Seed()
	pub, _ := user.PublicKey()
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: t.TempDir(), Configure: func(o *server.Options) {
		o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	url := ns.ClientURL()
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := bus.Connect(ctx, url, bus.ConnectOptions{Name: "test", NKeySeedFile: seedFile})
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()

	if _, err := bus.Connect(ctx, url, bus.ConnectOptions{}); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("anonymous connect to an nkey server: want unavailable, got %v", err)
	}
	missing := filepath.Join(dir, "nope.creds")
	if _, err := bus.Connect(ctx, url, bus.ConnectOptions{CredsFile: missing}); !events.IsReason(err, events.ReasonNotFound) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing creds file: got %v", err)
	}
	if _, err := bus.Connect(ctx, url, bus.ConnectOptions{CredsFile: seedFile, NKeySeedFile: seedFile}); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("creds and nkey together: got %v", err)
	}
	junk := filepath.Join(dir, "junk.nk")
	if err := os.WriteFile(junk, []byte("not a seed"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = bus.Connect(ctx, url, bus.ConnectOptions{NKeySeedFile: junk})
	var e *events.Error
	if !errors.As(err, &e) || e.Reason != events.ReasonMalformed {
		t.Fatalf("junk seed file: got %v", err)
	}
}

// Three embedded nodes joined by routes form a JetStream cluster that
// holds R3 streams. Every node is given the same routes, itself among
// them.
func TestEmbeddedClusterHoldsReplicatedStreams(t *testing.T) {
	ctx := ctxT(t)
	ports := []int{bustest.FreePort(t), bustest.FreePort(t), bustest.FreePort(t)}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	var nodes []*server.Server
	for i, p := range ports {
		ns, err := bus.StartEmbedded(bus.EmbeddedConfig{
			StoreDir: t.TempDir(), ServerName: fmt.Sprintf("n%d", i), LazySync: true,
			Cluster: &bus.ClusterConfig{Name: "test", Port: p, Routes: routes},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		nodes = append(nodes, ns)
	}
	nc := bustest.Connect(t, nodes[2].ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testStream("R3", "r3.>")
	cfg.Replicas = 3
	// The cluster answers once its nodes have met and elected a meta
	// leader.
	began := time.Now()
	bustest.Eventually(t, 30*time.Second, func() bool {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return bus.Provision(actx, js, cfg) == nil
	}, "an R3 stream provisioned")
	t.Logf("R3 stream provisioned after %s", time.Since(began))
	if _, err := js.Publish(ctx, "r3.x", []byte("fact")); err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, 20*time.Second, func() bool {
		st, err := js.Stream(ctx, "R3")
		if err != nil {
			return false
		}
		info := st.CachedInfo()
		if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 || info.State.Msgs != 1 {
			return false
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current || r.Lag != 0 {
				return false
			}
		}
		return true
	}, "R3 has a leader and two current replicas holding the message")
}

func TestEmbeddedClusterNeedsNames(t *testing.T) {
	for _, c := range []struct {
		cfg  bus.EmbeddedConfig
		want string
	}{
		{bus.EmbeddedConfig{ServerName: "n0", Cluster: &bus.ClusterConfig{}}, "cluster's name"},
		{bus.EmbeddedConfig{Cluster: &bus.ClusterConfig{Name: "c"}}, "server name"},
		{bus.EmbeddedConfig{ServerName: "n0", Cluster: &bus.ClusterConfig{Name: "c"}}, "route URLs"},
		{bus.EmbeddedConfig{ServerName: "n0", Cluster: &bus.ClusterConfig{Name: "c", Routes: []string{"127.0.0.1"}}}, "nats-route://"},
	} {
		c.cfg.StoreDir = t.TempDir()
		ns, err := bus.StartEmbedded(c.cfg)
		if err == nil {
			ns.Shutdown()
			ns.WaitForShutdown()
			t.Fatalf("%+v started", c.cfg.Cluster)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want it to mention %q", c.cfg.Cluster, err, c.want)
		}
	}
}

// A batch loop busy committing must find the next messages already waiting,
// so a backlog is committed in batches, not one message at a time.
func TestDeliveryGathersABatchWhileTheLoopIsBusy(t *testing.T) {
	ctx := ctxT(t)
	h := bustest.Start(t, bus.EmbeddedConfig{})
	if err := bus.Provision(ctx, h.JS, testStream("BACKLOG", "backlog.>")); err != nil {
		t.Fatal(err)
	}
	const n = 10
	for i := range n {
		if _, err := h.JS.Publish(ctx, "backlog.x", fmt.Appendf(nil, "m-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := h.JS.OrderedConsumer(ctx, "BACKLOG", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	iter, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	d := bus.Deliver(iter, n)
	defer d.Stop()

	// The loop is "busy" until the backlog has gathered in the buffer.
	bustest.Eventually(t, 10*time.Second, func() bool { return len(d.C) == n }, "the backlog to gather in the buffer")
	batch := bus.TakeReady([]jetstream.Msg{<-d.C}, d.C, n)
	if len(batch) != n {
		t.Fatalf("one receive and TakeReady took %d messages, want the whole backlog of %d", len(batch), n)
	}
	for i, m := range batch {
		if want := fmt.Sprintf("m-%d", i); string(m.Data()) != want {
			t.Fatalf("message %d is %q, want %q", i, m.Data(), want)
		}
	}
}

func TestDeliveryStopsCleanly(t *testing.T) {
	ctx := ctxT(t)
	h := bustest.Start(t, bus.EmbeddedConfig{})
	if err := bus.Provision(ctx, h.JS, testStream("STOPS", "stops.>")); err != nil {
		t.Fatal(err)
	}
	cons, err := h.JS.OrderedConsumer(ctx, "STOPS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	iter, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	d := bus.Deliver(iter, 1)
	d.Stop() // with nothing delivered: must not block; goleak checks the goroutine ended
	if _, open := <-d.C; open {
		t.Fatal("C still open after Stop")
	}
}
