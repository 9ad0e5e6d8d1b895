// Package guard is the service in front of every sync event: nothing reaches
// a journal, a snapshot, an upgrade or a peer's sync responder unless the
// guard accepted it.
//
// The guard drains INGRESS and decides every fact (check.go): decode, size,
// schema version, device signature, Biscuit token, revocation, clock skew,
// OPA policy. Accepted facts go to JOURNAL in atomic batches (journal.go),
// rejected ones to DENIED with a stable reason code, and only then is the
// INGRESS message acknowledged (ingress.go). It also fronts the client API
// and this peer's peer subjects, forwarding only requests whose token and
// policy allow them (requests.go), and keeps the replicated revocation set
// (revocations.go).
package guard

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/backlog"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Name is the service name, the INGRESS durable consumer and the request
// queue group.
const Name = "guard"

// DefaultMaxClockSkew is how far ahead of the guard's clock a fact's HLC
// may be.
const DefaultMaxClockSkew = 5 * time.Minute

// Config tunes the guard. The zero value is ready to use.
type Config struct {
	// PolicyDir is a directory of .rego files and a data.json; empty uses
	// the policy shipped in the binary (DefaultPolicy). The guard prepares
	// it at start and again whenever its content changes.
	PolicyDir string
	// PolicyReloadInterval is how often PolicyDir is checked for changes
	// (default 5s).
	PolicyReloadInterval time.Duration
	// MaxClockSkew defaults to DefaultMaxClockSkew.
	MaxClockSkew time.Duration
	// AckWait is how long INGRESS waits for the guard's ack before it
	// redelivers (default 30s). It must stay well below
	// events.DedupWindow.
	AckWait time.Duration
	// IngressBatch is how many INGRESS messages are decided and committed
	// to JOURNAL together (default 64).
	IngressBatch int
	// MaxAtomicBatch caps the messages in one JOURNAL atomic batch
	// (default and maximum 1000).
	MaxAtomicBatch int
	// RequestTimeout bounds a forwarded request (default 10s).
	RequestTimeout time.Duration
	// LongRequestTimeout bounds a forwarded request whose work grows with
	// the authority's history, events.LongRequest (default
	// events.LongRequestTimeout).
	LongRequestTimeout time.Duration
	// RateWindow is the window of the policy's per-authority rate limits
	// (default 1s).
	RateWindow time.Duration
	// MaxCachedTokens bounds the verified-token cache (default 10000).
	MaxCachedTokens int
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PolicyReloadInterval, 5*time.Second)
	def(&c.MaxClockSkew, DefaultMaxClockSkew)
	def(&c.AckWait, 30*time.Second)
	def(&c.RequestTimeout, 10*time.Second)
	def(&c.LongRequestTimeout, events.LongRequestTimeout)
	def(&c.RateWindow, time.Second)
	if c.IngressBatch <= 0 {
		c.IngressBatch = 64
	}
	return c
}

// Service is the guard.
type Service struct {
	cfg        Config
	verifier   *capability.Verifier
	policy     *policyHolder
	signatures *signatureCache
	// tokenDeadlines is the zero value (the defaults) but in tests.
	tokenDeadlines tokenDeadlines
}

var _ service.Service = (*Service)(nil)

// New returns a guard.
func New(cfg Config) *Service {
	cfg = cfg.withDefaults()
	return &Service{
		cfg:        cfg,
		verifier:   capability.NewVerifier(cfg.MaxCachedTokens),
		policy:     &policyHolder{dir: cfg.PolicyDir},
		signatures: newSignatureCache(),
	}
}

// Name returns "guard".
func (s *Service) Name() string { return Name }

// Streams are INGRESS, JOURNAL and DENIED, which the guard owns.
func (s *Service) Streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{events.IngressStream(), events.JournalStream(), events.DeniedStream()}
}

// Run serves until ctx is cancelled.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	e := *env // fill in defaults without touching the runner's Env
	env = &e
	if env.Clock == nil {
		env.Clock = clock.Real{}
	}
	if env.Log == nil {
		env.Log = slog.Default()
	}
	log := env.Log.With("service", Name)
	if err := s.loadPolicy(ctx); err != nil {
		return err
	}
	m, err := newMetrics(env.Meter)
	if err != nil {
		return fmt.Errorf("guard: metrics: %w", err)
	}
	journal, err := env.JS.Stream(ctx, events.StreamJournal)
	if err != nil {
		return fmt.Errorf("guard: JOURNAL stream (provisioned by the runner): %w", err)
	}
	revocations, err := s.watchRevocations(ctx, env.JS, log)
	if err != nil {
		return err
	}
	prunedFloors, err := watchPrunedFloors(ctx, env.JS, journal, log)
	if err != nil {
		return err
	}
	tracer := env.Tracer
	if tracer == nil {
		tracer = tracenoop.NewTracerProvider().Tracer(Name)
	}
	g := &running{
		Service: s,
		env:     env,
		log:     log,
		tracer:  tracer,
		metrics: m,
		check: &checker{
			verifier: s.verifier,
			policy:   s.policy,
			rates:    newRateWindows(s.cfg.RateWindow),
			maxSkew:  s.cfg.MaxClockSkew,
			// One guard process keeps one cache, whatever its runs.
			signatures:     s.signatures,
			tokenDeadlines: s.tokenDeadlines,
		},
		journal:      newJournalWriter(env.Conn, env.JS, journal, s.cfg.MaxAtomicBatch),
		revocations:  revocations,
		prunedFloors: prunedFloors,
		protocol:     &events.ProtocolGate{},
	}
	go g.followProtocol(ctx)
	subs, err := g.serveRequests(ctx)
	if err != nil {
		return err
	}
	pruneSub, err := g.servePrune(ctx)
	if err != nil {
		return err
	}
	verifySub, err := g.serveVerify(ctx)
	if err != nil {
		return err
	}
	subs = append(subs, pruneSub, verifySub)
	defer func() {
		for _, sub := range subs {
			_ = sub.Drain()
		}
	}()

	ingress, err := g.startIngress(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	if s.cfg.PolicyDir != "" {
		wg.Go(func() { s.reloadPolicy(ctx, env.Clock, log) })
	}
	wg.Go(func() { g.dropAckedLeftoversEvery(ctx) })
	wg.Go(func() {
		_ = backlog.Watch(ctx, env.Meter, env.Clock, 0, log, backlog.Durable(env.JS, events.StreamIngress, Name))
	})
	if env.Ready != nil {
		env.Ready()
	}
	ingress.run(ctx)
	g.stopRequests()
	wg.Wait()
	return nil
}

// running is a guard between Run's start and return.
type running struct {
	*Service
	env         *service.Env
	log         *slog.Logger
	tracer      trace.Tracer
	metrics     *metrics
	check       *checker
	journal     *journalWriter
	revocations jetstream.KeyValue
	// prunedFloors refuses pruned facts that arrive again (pruned.go).
	prunedFloors *prunedFloors

	// protocol is the sync protocol version in force (OTA hard forks);
	// peer requests from below it are refused.
	protocol *events.ProtocolGate

	// pruneMu runs prunes one at a time (prune.go).
	pruneMu sync.Mutex

	requestsMu     sync.Mutex
	requestsClosed bool
	requests       sync.WaitGroup
}

// followProtocol follows the active protocol version once the ota service
// has created its stream; until then every peer at protocol 1 or above is
// admitted, as no hard fork can have activated.
func (g *running) followProtocol(ctx context.Context) {
	if _, err := bus.WaitForStream(ctx, g.env.JS, events.StreamOTA, g.env.Clock, nil); err != nil {
		return
	}
	if err := g.protocol.Watch(ctx, g.env.JS); err != nil && ctx.Err() == nil {
		g.log.Error("cannot follow the active protocol version; peers are checked against the last one seen", "err", err)
	}
}

func (s *Service) loadPolicy(ctx context.Context) error {
	if s.cfg.PolicyDir == "" {
		p, err := LoadPolicy(ctx, DefaultPolicy())
		if err != nil {
			return err
		}
		s.policy.current.Store(p)
		return nil
	}
	_, err := s.policy.reload(ctx)
	return err
}

// reloadPolicy prepares PolicyDir again whenever its content changes.
func (s *Service) reloadPolicy(ctx context.Context, clk clock.Clock, log *slog.Logger) {
	t := clk.NewTicker(s.cfg.PolicyReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			switch changed, err := s.policy.reload(ctx); {
			case err != nil:
				log.Error("policy reload failed; keeping the running policy", "dir", s.cfg.PolicyDir, "err", err)
			case changed:
				log.Info("policy reloaded", "dir", s.cfg.PolicyDir)
			}
		}
	}
}

// provisionKV is bus.ProvisionKV for one bucket.
func provisionKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kvs, err := bus.ProvisionKV(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	return kvs[0], nil
}

// followKV applies every entry of kv, those there now and those to come,
// until ctx ends, and returns once the ones there now are applied: the
// guard is not ready before it knows every revocation and prune cut.
// Deletes are ignored: the guard's buckets only ever grow.
func followKV(ctx context.Context, kv jetstream.KeyValue, what string, apply func(jetstream.KeyValueEntry)) error {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("guard: watch %s: %w", what, err)
	}
	loaded := make(chan struct{})
	go func() {
		defer func() { _ = w.Stop() }()
		initial := true
		for entry := range w.Updates() {
			if entry == nil {
				if initial {
					initial = false
					close(loaded)
				}
				continue
			}
			apply(entry)
		}
	}()
	select {
	case <-loaded:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
