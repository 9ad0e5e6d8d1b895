// Package runner runs a set of factsync services in one process, the way
// Loki and Mimir run their -target modules: it provisions the streams each
// service owns, hands each its Env, starts them, serves /healthz, /readyz
// and /metrics, and on shutdown waits (bounded) for every service to drain.
package runner

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/factsync/factsync/shared/telemetry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Config is what the runner needs to build every service's Env.
type Config struct {
	// Conn is shared by the services. The caller owns it and closes it
	// after Wait returns.
	Conn *nats.Conn
	// ServiceConns gives named services a connection of their own, so each
	// runs as its own NATS user (the guard is the only user that may write
	// the accepted streams). Services not listed use Conn.
	ServiceConns map[string]*nats.Conn
	// StreamReplicas, when above 1, sets the replicas of every stream the
	// services provision (3 on a JetStream cluster).
	StreamReplicas int
	// JetStreamDomain selects the peer's JetStream domain; empty for the
	// local one.
	JetStreamDomain string
	// DataRoot holds one private directory per service (DataRoot/<name>).
	DataRoot string
	// Peer and PeerKey are this site's identity.
	Peer    events.PeerID
	PeerKey ed25519.PrivateKey
	// Telemetry names a tracer and meter per service and serves /metrics.
	// Nil means no-op tracing and metrics.
	Telemetry *telemetry.Telemetry
	// Logger defaults to slog.Default(); each service's gets its name.
	Logger *slog.Logger
	// Clock defaults to the wall clock.
	Clock clock.Clock
	// HTTPAddr, when set, serves the status endpoints ("127.0.0.1:0" picks
	// a port; see Addr).
	HTTPAddr string
	// DrainTimeout bounds the wait for services to return after the
	// context is cancelled. Default 15 s.
	DrainTimeout time.Duration
}

// State is where a service is in its life.
type State string

// The states /readyz reports.
const (
	StateStarting State = "starting" // Run called, Ready not yet
	StateReady    State = "ready"
	StateStopped  State = "stopped" // returned after shutdown began
	StateFailed   State = "failed"  // returned an error, panicked, or returned early
)

// Status is one service's entry in /readyz.
type Status struct {
	Name  string `json:"name"`
	State State  `json:"state"`
	Error string `json:"error,omitempty"`
	// Detail is the service's remark (service.Env.Remark), e.g. what it
	// refuses for want of configuration.
	Detail string `json:"detail,omitempty"`
}

// Runner is a started set of services.
type Runner struct {
	cfg    Config
	ctx    context.Context // cancelled on shutdown or on the first failure
	cancel context.CancelFunc
	names  []string

	mu       sync.Mutex
	status   map[string]*Status
	errs     []error
	ready    chan struct{}
	nReady   int
	stopping bool

	running sync.WaitGroup
	server  *http.Server
	served  chan struct{}
	addr    string
}

// Run starts the services and waits for them; see Start and Wait.
func Run(ctx context.Context, cfg Config, services ...service.Service) error {
	r, err := Start(ctx, cfg, services...)
	if err != nil {
		return err
	}
	return r.Wait()
}

// Start provisions every service's streams, then runs each in its own
// goroutine and serves the status endpoints. Cancelling ctx stops them
// all; so does any service failing. Call Wait to collect the outcome.
func Start(ctx context.Context, cfg Config, services ...service.Service) (*Runner, error) {
	if err := cfg.check(services); err != nil {
		return nil, err
	}
	r := &Runner{cfg: cfg, status: map[string]*Status{}, ready: make(chan struct{})}
	envs := make([]*service.Env, len(services))
	for i, svc := range services {
		name := svc.Name()
		conn := cfg.connFor(name)
		js, err := newJetStream(conn, cfg.JetStreamDomain)
		if err != nil {
			return nil, err
		}
		// Each service provisions what it owns under its own NATS user:
		// only the guard's user may change the guarded streams.
		streams := svc.Streams()
		for i := range streams {
			if cfg.StreamReplicas > 1 {
				streams[i].Replicas = cfg.StreamReplicas
			}
		}
		if err := bus.Provision(ctx, js, streams...); err != nil {
			return nil, fmt.Errorf("runner: streams of service %s: %w", name, err)
		}
		r.names = append(r.names, name)
		r.status[name] = &Status{Name: name, State: StateStarting}
		if envs[i], err = r.env(conn, js, name); err != nil {
			return nil, err
		}
	}
	if cfg.HTTPAddr != "" {
		if err := r.listen(cfg.HTTPAddr); err != nil {
			return nil, err
		}
	}
	r.ctx, r.cancel = context.WithCancel(ctx)
	for i, svc := range services {
		r.running.Add(1)
		go r.run(svc, envs[i])
	}
	return r, nil
}

func (cfg *Config) check(services []service.Service) error {
	if len(services) == 0 {
		return errors.New("runner: no services to run")
	}
	if cfg.Conn == nil {
		return errors.New("runner: a NATS connection is required")
	}
	if cfg.DataRoot == "" {
		return errors.New("runner: a data root directory is required")
	}
	seen := map[string]bool{}
	for _, svc := range services {
		name := svc.Name()
		if err := events.CheckName("service name", name); err != nil {
			return err
		}
		if seen[name] {
			return fmt.Errorf("runner: service %s given twice", name)
		}
		seen[name] = true
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 15 * time.Second
	}
	return nil
}

func (cfg *Config) connFor(service string) *nats.Conn {
	if nc := cfg.ServiceConns[service]; nc != nil {
		return nc
	}
	return cfg.Conn
}

func newJetStream(nc *nats.Conn, domain string) (jetstream.JetStream, error) {
	if domain != "" {
		return jetstream.NewWithDomain(nc, domain)
	}
	return jetstream.New(nc)
}

// env builds a service's Env. Its DataDir is created private (0700),
// because services keep checkpoints and keys there.
func (r *Runner) env(conn *nats.Conn, js jetstream.JetStream, name string) (*service.Env, error) {
	dir := filepath.Join(r.cfg.DataRoot, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("runner: data directory of service %s: %w", name, err)
	}
	env := &service.Env{
		Conn:    conn,
		JS:      js,
		Log:     r.cfg.Logger.With("service", name),
		Clock:   r.cfg.Clock,
		Tracer:  tracenoop.NewTracerProvider().Tracer(name),
		Meter:   metricnoop.NewMeterProvider().Meter(name),
		Peer:    r.cfg.Peer,
		PeerKey: r.cfg.PeerKey,
		DataDir: dir,
		Ready:   func() { r.markReady(name) },
		Remark:  func(detail string) { r.remark(name, detail) },
	}
	if t := r.cfg.Telemetry; t != nil {
		env.Tracer, env.Meter = t.Tracer(name), t.Meter(name)
	}
	return env, nil
}

// run runs one service and records how it ended. A service that fails,
// panics or returns before shutdown stops the whole process: running a
// subset silently would look healthy while facts pile up.
func (r *Runner) run(svc service.Service, env *service.Env) {
	defer r.running.Done()
	name := svc.Name()
	err := runRecovering(r.ctx, svc, env)
	shuttingDown := r.ctx.Err() != nil
	if err == nil && !shuttingDown {
		err = errors.New("returned before shutdown")
	}
	r.mu.Lock()
	st := r.status[name]
	if err != nil {
		st.State, st.Error = StateFailed, err.Error()
		r.errs = append(r.errs, fmt.Errorf("service %s: %w", name, err))
	} else {
		st.State = StateStopped
	}
	r.mu.Unlock()
	if err != nil {
		r.cfg.Logger.Error("service failed; stopping the others", "service", name, "err", err)
		r.cancel()
	}
}

func runRecovering(ctx context.Context, svc service.Service, env *service.Env) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	return svc.Run(ctx, env)
}

func (r *Runner) markReady(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status[name]
	if st.State != StateStarting {
		return
	}
	st.State = StateReady
	r.nReady++
	if r.nReady == len(r.names) {
		close(r.ready)
	}
}

func (r *Runner) remark(name, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status[name].Detail = detail
}

// Ready is closed once every service has called Env.Ready.
func (r *Runner) Ready() <-chan struct{} { return r.ready }

// Status reports every service's state, in the order given to Start.
func (r *Runner) Status() []Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Status, 0, len(r.names))
	for _, name := range r.names {
		out = append(out, *r.status[name])
	}
	return out
}

// Wait blocks until the context is cancelled or a service fails, then
// waits up to DrainTimeout for every service to return and stops the
// status listener. It returns the services' errors, each with its name.
func (r *Runner) Wait() error {
	<-r.ctx.Done()
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()

	drained := make(chan struct{})
	go func() { r.running.Wait(); close(drained) }()
	var errs []error
	timeout := time.NewTimer(r.cfg.DrainTimeout)
	defer timeout.Stop()
	select {
	case <-drained:
	case <-timeout.C:
		var stuck []string
		for _, st := range r.Status() {
			if st.State == StateStarting || st.State == StateReady {
				stuck = append(stuck, st.Name)
			}
		}
		errs = append(errs, fmt.Errorf("runner: services %v still running %s after shutdown began", stuck, r.cfg.DrainTimeout))
	}
	if err := r.stopServer(); err != nil {
		errs = append(errs, err)
	}
	r.mu.Lock()
	errs = append(slices.Clone(r.errs), errs...)
	r.mu.Unlock()
	return errors.Join(errs...)
}

// Addr is the status listener's address, or "" when there is none.
func (r *Runner) Addr() string { return r.addr }

// Handler serves /healthz, /readyz and /metrics.
func (r *Runner) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", r.serveReady)
	if r.cfg.Telemetry != nil {
		mux.Handle("GET /metrics", r.cfg.Telemetry.MetricsHandler())
	}
	return mux
}

// readiness is the /readyz body.
type readiness struct {
	Ready    bool     `json:"ready"`
	Services []Status `json:"services"`
}

func (r *Runner) serveReady(w http.ResponseWriter, _ *http.Request) {
	r.mu.Lock()
	stopping := r.stopping
	r.mu.Unlock()
	body := readiness{Ready: !stopping, Services: r.Status()}
	for _, st := range body.Services {
		body.Ready = body.Ready && st.State == StateReady
	}
	w.Header().Set("Content-Type", "application/json")
	if !body.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(body)
}

func (r *Runner) listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("runner: status listener on %s: %w", addr, err)
	}
	r.addr = ln.Addr().String()
	r.server = &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 5 * time.Second}
	r.served = make(chan struct{})
	go func() {
		defer close(r.served)
		if err := r.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.cfg.Logger.Error("status listener stopped", "addr", r.addr, "err", err)
		}
	}()
	return nil
}

func (r *Runner) stopServer() error {
	if r.server == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.server.Shutdown(ctx)
	<-r.served
	if err != nil {
		return fmt.Errorf("runner: stop status listener: %w", err)
	}
	return nil
}
