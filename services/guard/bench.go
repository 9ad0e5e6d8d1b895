package guard

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// BenchConfig configures Bench. The zero value measures the decision path.
type BenchConfig struct {
	// Facts is how many facts to decide (default 20000).
	Facts int
	// BatchSize is the facts per INGRESS message (default 100); the facts
	// of one message share a token, as the SDK sends them.
	BatchSize int
	// Bus runs a whole guard against an embedded JetStream server in
	// StoreDir (fsync before ack) and times each INGRESS message from its
	// publish to its last fact's arrival in JOURNAL. Without it, Bench
	// times the checker alone (decode, size, schema, signature, token,
	// revocation, clock skew, policy) with no I/O.
	Bus      bool
	StoreDir string
}

// BenchResult is what `factsync bench guard --json` prints.
type BenchResult struct {
	Mode            string  `json:"mode"` // "check" or "bus"
	Facts           int     `json:"facts"`
	BatchSize       int     `json:"batch_size"`
	Seconds         float64 `json:"seconds"`
	DecisionsPerSec float64 `json:"decisions_per_sec"`
	// P50Millis and P99Millis are per INGRESS message (BatchSize facts).
	P50Millis float64 `json:"p50_ms"`
	P99Millis float64 `json:"p99_ms"`
	// Ed25519VerifiesPerSec is the raw signature verification rate on
	// every core (GOMAXPROCS goroutines), measured in the same run. Every
	// fact costs one verify and the guard verifies a batch on every core,
	// so it is the ceiling. Ed25519VerifiesPerSecOneCore is one goroutine's.
	Ed25519VerifiesPerSec        float64 `json:"ed25519_verifies_per_sec"`
	Ed25519VerifiesPerSecOneCore float64 `json:"ed25519_verifies_per_sec_one_core"`
	// CeilingRatio is DecisionsPerSec / Ed25519VerifiesPerSec: what share
	// of the ceiling the rest of the guard leaves.
	CeilingRatio float64 `json:"ceiling_ratio"`
	GOMAXPROCS   int     `json:"gomaxprocs"`
}

// JSON renders r as indented JSON.
func (r BenchResult) JSON() []byte {
	b, _ := json.MarshalIndent(r, "", "  ")
	return b
}

// Bench measures the guard's decisions per second and latency beside the
// machine's raw ed25519 verify rate. It reads the wall clock: it is a
// measurement, not protocol code.
func Bench(ctx context.Context, cfg BenchConfig) (BenchResult, error) {
	if cfg.Facts <= 0 {
		cfg.Facts = 20000
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 100
	}
	cfg.BatchSize = min(cfg.BatchSize, events.MaxBatchFacts)
	now := time.Now()
	subject, batches, err := benchBatches(cfg.Facts, cfg.BatchSize, now)
	if err != nil {
		return BenchResult{}, err
	}
	res := BenchResult{Mode: "check", Facts: cfg.Facts, BatchSize: cfg.BatchSize, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	res.Ed25519VerifiesPerSecOneCore = ed25519Rate(1)
	res.Ed25519VerifiesPerSec = ed25519Rate(res.GOMAXPROCS)

	var took time.Duration
	var latencies []time.Duration
	if cfg.Bus {
		res.Mode = "bus"
		took, latencies, err = benchBus(ctx, cfg, subject, batches)
	} else {
		took, latencies, err = benchCheck(ctx, subject, batches, now)
	}
	if err != nil {
		return BenchResult{}, err
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	res.Seconds = took.Seconds()
	res.DecisionsPerSec = float64(cfg.Facts) / took.Seconds()
	res.P50Millis, res.P99Millis = pct(0.50), pct(0.99)
	res.CeilingRatio = res.DecisionsPerSec / res.Ed25519VerifiesPerSec
	return res, nil
}

// benchBatches signs facts in INGRESS messages of batchSize, all valid.
func benchBatches(facts, batchSize int, now time.Time) (string, [][]byte, error) {
	authPub, authPriv, _ := ed25519.GenerateKey(rand.Reader)
	devPub, devPriv, _ := ed25519.GenerateKey(rand.Reader)
	token, err := capability.Mint(authPriv, devPub, []capability.Right{{Collection: "bench", Op: capability.OpWrite}}, now.Add(24*time.Hour))
	if err != nil {
		return "", nil, err
	}
	hash, _ := hex.DecodeString(events.TokenHash(token))
	var batches [][]byte
	for start := 0; start < facts; start += batchSize {
		fb := &eventsv1.FactBatch{Tokens: [][]byte{token}}
		for i := start; i < min(start+batchSize, facts); i++ {
			f, err := events.SignFact(devPriv, &eventsv1.FactBody{
				AuthorityKey: authPub,
				Hlc:          &eventsv1.HLC{WallMillis: uint64(now.UnixMilli()), Logical: uint32(i)},
				Collection:   "bench",
				Document:     fmt.Sprintf("doc-%d", i%1000),
				Op:           &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: fmt.Appendf(nil, `{"n":%d,"title":"a benchmark fact of ordinary size"}`, i)}},
				TokenHash:    hash,
			})
			if err != nil {
				return "", nil, err
			}
			fb.Facts = append(fb.Facts, f.Proto())
		}
		b, err := proto.Marshal(fb)
		if err != nil {
			return "", nil, err
		}
		batches = append(batches, b)
	}
	return events.IngressFactSubject(events.AuthorityIDOf(authPub)), batches, nil
}

// ed25519Rate measures verifies per second of fact-sized messages on
// workers goroutines.
func ed25519Rate(workers int) float64 {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 200)
	sig := ed25519.Sign(priv, msg)
	const perWorker = 3000
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for range perWorker {
				if !ed25519.Verify(pub, msg, sig) {
					panic("guard: ed25519 self-check failed")
				}
			}
		})
	}
	wg.Wait()
	return float64(workers*perWorker) / time.Since(start).Seconds()
}

func benchCheck(ctx context.Context, subject string, batches [][]byte, now time.Time) (time.Duration, []time.Duration, error) {
	p, err := LoadPolicy(ctx, DefaultPolicy())
	if err != nil {
		return 0, nil, err
	}
	h := &policyHolder{}
	h.current.Store(p)
	c := &checker{verifier: capability.NewVerifier(0), policy: h, rates: newRateWindows(time.Second), maxSkew: DefaultMaxClockSkew}
	latencies := make([]time.Duration, 0, len(batches))
	start := time.Now()
	for _, b := range batches {
		t0 := time.Now()
		v := c.check(ctx, subject, b, now, delivery{})
		latencies = append(latencies, time.Since(t0))
		if len(v.denials) > 0 {
			return 0, nil, fmt.Errorf("guard bench: a valid fact was denied: %s: %s", v.denials[0].GetReason(), v.denials[0].GetDetail())
		}
	}
	return time.Since(start), latencies, nil
}

// benchBus runs a guard on an embedded server and times INGRESS to JOURNAL.
func benchBus(ctx context.Context, cfg BenchConfig, subject string, batches [][]byte) (time.Duration, []time.Duration, error) {
	if cfg.StoreDir == "" {
		return 0, nil, errors.New("guard bench: the bus mode needs a store directory")
	}
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: cfg.StoreDir, Port: -1})
	if err != nil {
		return 0, nil, err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return 0, nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, nil, err
	}
	g := New(Config{})
	if err := bus.Provision(ctx, js, g.Streams()...); err != nil {
		return 0, nil, err
	}

	// Count each message's facts as they land in JOURNAL.
	factBatch := map[string]int{}
	for i, b := range batches {
		var fb eventsv1.FactBatch
		_ = proto.Unmarshal(b, &fb)
		for _, sf := range fb.GetFacts() {
			f, err := events.FactFromProto(sf)
			if err != nil {
				return 0, nil, err
			}
			factBatch[f.ID.String()] = i
		}
	}
	var (
		mu        sync.Mutex
		sent      = make([]time.Time, len(batches))
		remaining = make([]int, len(batches))
		latencies []time.Duration
		done      = make(chan struct{})
	)
	for _, i := range factBatch {
		remaining[i]++
	}
	sub, err := nc.Subscribe(events.JournalPrefix+".>", func(m *nats.Msg) {
		i, ok := factBatch[m.Header.Get(events.HeaderMsgID)]
		if !ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if remaining[i]--; remaining[i] == 0 {
			latencies = append(latencies, time.Since(sent[i]))
			if len(latencies) == len(batches) {
				close(done)
			}
		}
	})
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()

	gctx, cancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	stopped := make(chan error, 1)
	env := &service.Env{Conn: nc, JS: js, Clock: clock.Real{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Ready: func() { close(ready) }}
	go func() { stopped <- g.Run(gctx, env) }()
	defer func() {
		cancel()
		if err := <-stopped; err != nil { // the result does not depend on it
			slog.Debug("guard bench: the guard stopped with an error", "err", err)
		}
	}()
	select {
	case <-ready:
	case err := <-stopped:
		return 0, nil, fmt.Errorf("guard bench: guard stopped: %w", err)
	}

	start := time.Now()
	for i, b := range batches {
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		if _, err := js.PublishAsync(subject, b); err != nil {
			return 0, nil, err
		}
		if i%256 == 255 { // stay under nats.go's limit of pending async publishes
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				return 0, nil, ctx.Err()
			}
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
	return time.Since(start), latencies, nil
}
