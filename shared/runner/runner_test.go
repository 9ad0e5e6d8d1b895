package runner_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/service"
	"github.com/factsync/factsync/shared/telemetry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fake is a service that subscribes to a subject (so it holds real bus
// resources), becomes ready when release is closed, and returns err (or
// nil) on shutdown.
type fake struct {
	name     string
	streams  []jetstream.StreamConfig
	release  chan struct{}
	fail     error         // returned at once, before Ready
	stubborn chan struct{} // when set, ignore shutdown until closed
	env      chan *service.Env
}

func newFake(name string) *fake {
	f := &fake{name: name, release: make(chan struct{}), env: make(chan *service.Env, 1)}
	close(f.release)
	return f
}

func (f *fake) Name() string                      { return f.name }
func (f *fake) Streams() []jetstream.StreamConfig { return f.streams }
func (f *fake) Run(ctx context.Context, env *service.Env) error {
	f.env <- env
	if f.fail != nil {
		return f.fail
	}
	sub, err := env.Conn.Subscribe("fake."+f.name, func(m *nats.Msg) { _ = m.Respond([]byte(f.name)) })
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	select {
	case <-f.release:
		env.Ready()
	case <-ctx.Done():
		return nil
	}
	<-ctx.Done()
	if f.stubborn != nil {
		<-f.stubborn
	}
	return nil
}

var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func readyz(t *testing.T, r *runner.Runner) (int, map[string]string) {
	t.Helper()
	code, body := get(t, "http://"+r.Addr()+"/readyz")
	var parsed struct {
		Ready    bool
		Services []runner.Status
	}
	if err := json.Unmarshal([]byte(body), &parsed); err != nil {
		t.Fatalf("readyz body %q: %v", body, err)
	}
	states := map[string]string{}
	for _, s := range parsed.Services {
		states[s.Name] = string(s.State)
	}
	if parsed.Ready != (code == http.StatusOK) {
		t.Fatalf("readyz code %d disagrees with ready=%v", code, parsed.Ready)
	}
	return code, states
}

func config(t *testing.T, h *bustest.Harness) runner.Config {
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "factsync-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return runner.Config{Conn: h.Conn, DataRoot: t.TempDir(), Telemetry: tel, HTTPAddr: "127.0.0.1:0", DrainTimeout: 5 * time.Second}
}

func TestRunsServicesReportsReadinessAndStopsCleanly(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	journal, guard := newFake("journal"), newFake("guard")
	guard.release = make(chan struct{})
	guard.streams = []jetstream.StreamConfig{{Name: "FAKE", Subjects: []string{"fakestream.>"}}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := runner.Start(ctx, config(t, h), journal, guard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.JS.Stream(ctx, "FAKE"); err != nil {
		t.Fatalf("guard's stream not provisioned: %v", err)
	}
	env := <-journal.env
	if env.DataDir == "" || !strings.HasSuffix(env.DataDir, "journal") {
		t.Fatalf("journal's DataDir %q", env.DataDir)
	}
	if fi, err := os.Stat(env.DataDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("journal's DataDir not a private directory: %v %v", fi, err)
	}
	if code, _ := get(t, "http://"+r.Addr()+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz %d", code)
	}
	// journal is ready at once; guard waits to be released.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		code, states := readyz(t, r)
		if code != http.StatusServiceUnavailable {
			t.Fatalf("readyz %d before guard is ready", code)
		}
		if states["journal"] == "ready" && states["guard"] == "starting" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("states %v", states)
		}
	}
	close(guard.release)
	select {
	case <-r.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("not ready")
	}
	if code, states := readyz(t, r); code != http.StatusOK || states["guard"] != "ready" {
		t.Fatalf("readyz %d %v after all ready", code, states)
	}
	if code, body := get(t, "http://"+r.Addr()+"/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("metrics %d", code)
	}
	if m, err := h.Conn.Request("fake.guard", nil, 5*time.Second); err != nil || string(m.Data) != "guard" {
		t.Fatalf("guard not serving: %v", err)
	}
	cancel()
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, st := range r.Status() {
		if st.State != runner.StateStopped {
			t.Fatalf("%s is %s after Wait", st.Name, st.State)
		}
	}
}

func TestFailingServiceStopsOthersAndIsNamed(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	bad := newFake("ota")
	bad.fail = errors.New("cannot open checkpoint")
	r, err := runner.Start(context.Background(), config(t, h), newFake("journal"), bad)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Wait()
	if err == nil || !strings.Contains(err.Error(), "service ota: cannot open checkpoint") {
		t.Fatalf("Wait: %v", err)
	}
	if strings.Contains(err.Error(), "journal") {
		t.Fatalf("journal stopped cleanly but is reported: %v", err)
	}
}

func TestPanicIsReportedWithServiceName(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	r, err := runner.Start(context.Background(), config(t, h), panicky{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Wait(); err == nil || !strings.Contains(err.Error(), "service snapshot: panic: boom") {
		t.Fatalf("Wait: %v", err)
	}
}

type panicky struct{}

func (panicky) Name() string                            { return "snapshot" }
func (panicky) Streams() []jetstream.StreamConfig       { return nil }
func (panicky) Run(context.Context, *service.Env) error { panic("boom") }

func TestDrainTimeoutNamesStuckService(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	stuck := newFake("receipts")
	stuck.stubborn = make(chan struct{})
	cfg := config(t, h)
	cfg.DrainTimeout = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	r, err := runner.Start(ctx, cfg, stuck)
	if err != nil {
		t.Fatal(err)
	}
	<-r.Ready()
	cancel()
	err = r.Wait()
	close(stuck.stubborn) // let the goroutine end so goleak stays meaningful
	if err == nil || !strings.Contains(err.Error(), "receipts") {
		t.Fatalf("Wait: %v", err)
	}
	// Wait for the stubborn service to unwind before the leak check.
	for deadline := time.Now().Add(5 * time.Second); r.Status()[0].State == runner.StateReady; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("stubborn service did not return")
		}
	}
}

func TestRejectsBadServiceSets(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	cfg := config(t, h)
	if _, err := runner.Start(context.Background(), cfg, newFake("guard"), newFake("guard")); err == nil {
		t.Fatal("two services named guard accepted")
	}
	if _, err := runner.Start(context.Background(), cfg); err == nil {
		t.Fatal("empty service set accepted")
	}
	bad := newFake("journal")
	bad.streams = []jetstream.StreamConfig{{Name: "X", Subjects: []string{"x.>"}, Retention: jetstream.LimitsPolicy}}
	if err := bus.Provision(context.Background(), h.JS, jetstream.StreamConfig{Name: "X", Subjects: []string{"x.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := runner.Start(context.Background(), cfg, bad); err == nil || !strings.Contains(err.Error(), "service journal") {
		t.Fatalf("conflicting stream: %v", err)
	}
}
