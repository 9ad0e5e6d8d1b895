// Package bench is `factsync bench bootstrap`: a new peer converging from
// a snapshot against a new peer replaying every fact through anti-entropy,
// in one run, against the same source. It runs whole peers (embedded
// server with fsync, mesh-linked, guard, snapshot and anti-entropy
// services), so it lives apart from the services it puts together.
package bench

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/snapshot"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/cpuclock"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Config says what the bench measures.
type Config struct {
	// Facts is the authority's whole history (default 20000).
	Facts int
	// HistoryPerLive is history over live state: each document is
	// written that many times, so the snapshot holds Facts/HistoryPerLive
	// facts (default 10).
	HistoryPerLive int
	// AfterCut is the share of the history written after the cut, which
	// the bootstrapped peer reconciles fact by fact (default 0.01).
	AfterCut float64
	// StoreDir holds the peers' JetStream stores (default a temporary
	// directory, removed afterwards).
	StoreDir string
	Seed     uint64
	// LeafCompression is the mesh links' s2 compression mode (default
	// "off"; "auto" is nats-server's s2_auto). The peers share loopback,
	// where s2_auto means uncompressed, but s2_auto measures the round
	// trip at connect time, so on a busy machine it picks anything up to
	// s2_best (a fifth of a bootstrap's CPU), differently from run to run.
	LeafCompression string
	// ProfileDir, when set, receives a CPU profile of each timed span:
	// snapshot.pprof and replay.pprof (every peer's work in the process).
	ProfileDir string
}

// Result is what `factsync bench bootstrap --json` prints.
type Result struct {
	Facts         int     `json:"facts"`
	Documents     int     `json:"documents"`
	SnapshotFacts int     `json:"snapshot_facts"`
	AfterCutFacts int     `json:"after_cut_facts"`
	SnapshotBytes int64   `json:"snapshot_bytes"`
	CreateSeconds float64 `json:"create_seconds"`
	// SnapshotSeconds: a new peer, from its services being ready until its
	// JOURNAL holds the source's state: its anti-entropy service hears the
	// source, is offered the source's snapshot, restores it (fetch through
	// the source's guard, verify, load into INGRESS, wait for its guard),
	// and reconciles the range after the cut.
	SnapshotSeconds float64 `json:"snapshot_bootstrap_seconds"`
	// ReplaySeconds: the same for a new peer that does not bootstrap from
	// snapshots: anti-entropy reconciles the whole range and pulls every
	// fact of the history through its guard.
	ReplaySeconds float64 `json:"replay_seconds"`
	Speedup       float64 `json:"speedup"`
	// SnapshotCPUSeconds and ReplayCPUSeconds are the CPU time the whole
	// process (every peer) spent over the same spans, and CPUSpeedup their
	// ratio: on a machine shared with other work it moves less than the
	// elapsed times do.
	SnapshotCPUSeconds float64 `json:"snapshot_bootstrap_cpu_seconds"`
	// SnapshotIngress and ReplayIngress count the messages each new peer
	// put into its INGRESS over its span (fact batches: restored, pulled,
	// and pulled again by a later session while the guard was behind).
	SnapshotIngress  uint64  `json:"snapshot_ingress_messages"`
	ReplayIngress    uint64  `json:"replay_ingress_messages"`
	ReplayCPUSeconds float64 `json:"replay_cpu_seconds"`
	CPUSpeedup       float64 `json:"cpu_speedup"`
	// RestorePhases is when, in seconds after the snapshot peer was ready,
	// its restore first reported each phase (fetching, verifying, loading,
	// settling, complete).
	RestorePhases map[events.SnapshotPhase]float64 `json:"restore_phases"`
	// RestorePhasesCPU is the process CPU time spent by then.
	RestorePhasesCPU map[events.SnapshotPhase]float64 `json:"restore_phases_cpu"`
	LeafCompression  string                           `json:"leaf_compression"`
	GOMAXPROCS       int                              `json:"gomaxprocs"`
}

// Peer indexes on the bench's mesh.
const (
	sourcePeer = iota
	snapshotPeer
	replayPeer
	peerCount
)

// Run times a new peer converging from a snapshot against one replaying
// every fact, in one run.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if cfg.Facts <= 0 {
		cfg.Facts = 20000
	}
	if cfg.HistoryPerLive <= 0 {
		cfg.HistoryPerLive = 10
	}
	if cfg.AfterCut <= 0 || cfg.AfterCut >= 1 {
		cfg.AfterCut = 0.01
	}
	if cfg.LeafCompression == "" {
		cfg.LeafCompression = server.CompressionOff
	}
	if cfg.StoreDir == "" {
		dir, err := os.MkdirTemp("", "factsync-bench-bootstrap-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(dir)
		cfg.StoreDir = dir
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5eed))
	docs := max(cfg.Facts/cfg.HistoryPerLive, 1)
	w, history, err := writeHistory(rng, cfg.Facts, docs)
	if err != nil {
		return res, err
	}
	cut := history[int(float64(len(history))*(1-cfg.AfterCut))].HLC.Seconds()
	res = Result{Facts: cfg.Facts, Documents: docs, LeafCompression: cfg.LeafCompression, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	want := fold.New()
	for _, f := range history {
		want.Apply(f)
		if f.HLC.Seconds() >= cut {
			res.AfterCutFacts++
		}
	}

	m, err := newMesh(rng, cfg.StoreDir, cfg.LeafCompression)
	if err != nil {
		return res, err
	}
	defer func() {
		if stopErr := m.stop(); err == nil {
			err = stopErr
		}
	}()
	src, err := m.start(ctx, sourcePeer, w, false, nil)
	if err != nil {
		return res, err
	}
	if err := src.load(ctx, w, history); err != nil {
		return res, err
	}
	start := time.Now()
	info, err := src.snap.Create(ctx, w.auth, cut, w.creds)
	if err != nil {
		return res, err
	}
	if !info.Committed {
		return res, errors.New("bootstrap bench: the source's snapshot did not commit")
	}
	res.CreateSeconds = time.Since(start).Seconds()
	res.SnapshotFacts, res.SnapshotBytes = int(info.Facts), info.ContentSize
	historyFacts, wantDigest := uint64(len(history)), want.Digest()

	for _, run := range []struct {
		peer         int
		seconds, cpu *float64
		ingress      *uint64
		facts        uint64
	}{
		{snapshotPeer, &res.SnapshotSeconds, &res.SnapshotCPUSeconds, &res.SnapshotIngress, info.Facts + uint64(res.AfterCutFacts)},
		{replayPeer, &res.ReplaySeconds, &res.ReplayCPUSeconds, &res.ReplayIngress, historyFacts},
	} {
		// Work the peers already running still owe (their JOURNAL readers
		// behind the last load or restore) would count towards this span.
		// The new peer starts after: it syncs as soon as it is up.
		if err := m.quiesce(ctx); err != nil {
			return res, err
		}
		runtime.GC()
		p, err := m.start(ctx, run.peer, w, true, func(p *peer) error {
			if run.peer != snapshotPeer {
				return nil
			}
			return p.watchRestore(w.auth)
		})
		if err != nil {
			return res, err
		}
		stopProfile, err := startProfile(cfg.ProfileDir, p.name)
		if err != nil {
			return res, err
		}
		ready, cpu := time.Now(), cpuclock.Start()
		p.ready.Store(&startedAt{at: ready, cpu: cpu})
		waitErr := p.waitFor(ctx, w.auth, run.facts)
		*run.seconds, *run.cpu = time.Since(ready).Seconds(), cpu.Seconds()
		if err := errors.Join(waitErr, stopProfile()); err != nil {
			return res, err
		}
		if *run.ingress, err = ingressMessages(ctx, p.js); err != nil {
			return res, err
		}
		if run.peer == snapshotPeer {
			p.mu.Lock()
			res.RestorePhases, res.RestorePhasesCPU = maps.Clone(p.phases), maps.Clone(p.phasesCPU)
			p.mu.Unlock()
		}
		st, err := p.fold(ctx, w.auth)
		if err != nil {
			return res, err
		}
		if st.Digest() != wantDigest {
			return res, fmt.Errorf("bootstrap bench: the %s peer did not converge to the source's documents", p.name)
		}
	}
	res.Speedup = res.ReplaySeconds / res.SnapshotSeconds
	res.CPUSpeedup = res.ReplayCPUSeconds / res.SnapshotCPUSeconds
	return res, nil
}

// startProfile starts a CPU profile of the span named name in dir, when
// dir is set, and returns what stops it.
func startProfile(dir, name string) (func() error, error) {
	if dir == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

// authority is the bench's writer.
type authority struct {
	auth  events.AuthorityID
	key   ed25519.PrivateKey // the authority's, to mint the peers' sync tokens
	token []byte             // the device's
	creds snapshot.Credentials
}

// writeHistory writes n puts over docs documents, round robin, in the hour
// before now: each document's last put is its live state.
func writeHistory(rng *rand.Rand, n, docs int) (*authority, []*events.Fact, error) {
	authPriv, devPriv := seededKey(rng), seededKey(rng)
	authPub := authPriv.Public().(ed25519.PublicKey)
	rights, _ := capability.ParseRights([]string{"*:write", "*:snapshot"})
	token, err := capability.Mint(authPriv, devPriv.Public().(ed25519.PublicKey), rights, time.Now().Add(24*time.Hour))
	if err != nil {
		return nil, nil, err
	}
	hash, _ := hex.DecodeString(events.TokenHash(token))
	start := time.Now().Add(-time.Hour)
	out := make([]*events.Fact, n)
	for i := range n {
		fields, _ := json.Marshal(map[string]any{"v": i})
		f, err := events.SignFact(devPriv, &eventsv1.FactBody{
			AuthorityKey: authPub,
			Hlc:          &eventsv1.HLC{WallMillis: uint64(start.Add(time.Duration(i) * time.Hour / time.Duration(n)).UnixMilli())},
			Collection:   "items",
			Document:     fmt.Sprintf("d%d", i%docs),
			Op:           &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: fields}},
			TokenHash:    hash,
		})
		if err != nil {
			return nil, nil, err
		}
		out[i] = f
	}
	a := &authority{auth: events.AuthorityIDOf(authPub), key: authPriv, token: token, creds: snapshot.Credentials{Token: token, AuthorityKey: authPub}}
	return a, out, nil
}

func seededKey(rng *rand.Rand) ed25519.PrivateKey {
	var seed [ed25519.SeedSize]byte
	for i := range seed {
		seed[i] = byte(rng.UintN(256))
	}
	return ed25519.NewKeyFromSeed(seed[:])
}

// benchMesh is the hub and the peers it links.
type benchMesh struct {
	dir   string
	hub   *mesh.Hub
	keys  [peerCount]ed25519.PrivateKey
	ids   [peerCount]events.PeerID
	peers []*peer
}

func newMesh(rng *rand.Rand, dir, compression string) (*benchMesh, error) {
	m := &benchMesh{dir: dir}
	for i := range m.keys {
		m.keys[i] = seededKey(rng)
		m.ids[i] = events.PeerIDOf(m.keys[i].Public().(ed25519.PublicKey))
	}
	if compression == "auto" {
		compression = server.CompressionS2Auto
	}
	hub, err := mesh.StartHub(mesh.HubConfig{Peers: m.ids[:], LeafCompression: compression})
	if err != nil {
		return nil, err
	}
	m.hub = hub
	return m, nil
}

// peer is one site: an embedded server (fsync before ack) linked to the
// hub, running a guard, the snapshot service and anti-entropy.
type peer struct {
	name   string
	server *server.Server
	conn   *nats.Conn
	js     jetstream.JetStream
	snap   *snapshot.Service
	runs   []*runner.Runner
	cancel context.CancelFunc
	ready  atomic.Pointer[startedAt] // when the peer's services were all up

	mu        sync.Mutex
	phases    map[events.SnapshotPhase]float64 // see Result.RestorePhases
	phasesCPU map[events.SnapshotPhase]float64 // see Result.RestorePhasesCPU
}

// startedAt is when a timed span started, in elapsed and CPU time.
type startedAt struct {
	at  time.Time
	cpu cpuclock.Clock
}

// watchRestore records when the peer's restore reports each phase.
func (p *peer) watchRestore(auth events.AuthorityID) error {
	_, err := p.conn.Subscribe(events.SnapshotProgressSubject(auth), func(m *nats.Msg) {
		pr, err := events.DecodeSnapshotProgress(m.Data)
		ready := p.ready.Load()
		if err != nil || ready == nil {
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.phases == nil {
			p.phases, p.phasesCPU = map[events.SnapshotPhase]float64{}, map[events.SnapshotPhase]float64{}
		}
		if _, seen := p.phases[pr.Phase]; !seen {
			p.phases[pr.Phase], p.phasesCPU[pr.Phase] = time.Since(ready.at).Seconds(), ready.cpu.Seconds()
		}
	})
	return err
}

// start starts peer i. The source holds no sync credential, so it only
// answers; a new peer holds one and syncs with the source as soon as it
// hears it; the replay peer does not bootstrap from snapshots.
func (m *benchMesh) start(ctx context.Context, i int, w *authority, syncs bool, beforeSync func(*peer) error) (*peer, error) {
	name := [peerCount]string{"source", "snapshot", "replay"}[i]
	ns, err := m.hub.StartPeer(i, bus.EmbeddedConfig{StoreDir: m.dir + "/" + name})
	if err != nil {
		return nil, err
	}
	p := &peer{name: name, server: ns}
	m.peers = append(m.peers, p)
	if p.conn, err = nats.Connect(ns.ClientURL(), nats.CustomInboxPrefix(m.hub.InboxPrefix(i))); err != nil {
		return nil, err
	}
	if p.js, err = jetstream.New(p.conn); err != nil {
		return nil, err
	}
	pub := m.keys[i].Public().(ed25519.PublicKey)
	aeCfg := antientropy.Config{SyncInterval: -1, PresenceInterval: 100 * time.Millisecond, NoBootstrap: i == replayPeer}
	if syncs {
		token, err := capability.Mint(w.key, pub, []capability.Right{{Collection: capability.AnyCollection, Op: capability.OpSync}}, time.Now().Add(24*time.Hour))
		if err != nil {
			return nil, err
		}
		aeCfg.Credentials = map[events.AuthorityID]antientropy.Credential{w.auth: {AuthorityKey: w.creds.AuthorityKey, Token: token}}
	}
	p.snap = snapshot.New(snapshot.Config{
		Default:    snapshot.Policy{Threshold: 1, Peers: []events.PeerID{m.ids[sourcePeer]}},
		EveryFacts: -1, EveryTime: -1, SettleTimeout: 10 * time.Minute,
	})
	runCtx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	// Anti-entropy starts once the guard and the snapshot service are up,
	// as on a peer that joins the mesh with its services running: its
	// first session may need to restore a snapshot.
	for j, svcs := range [][]service.Service{{guard.New(guard.Config{}), p.snap}, {antientropy.New(aeCfg)}} {
		if j == 1 && beforeSync != nil {
			if err := beforeSync(p); err != nil {
				return nil, err
			}
		}
		r, err := runner.Start(runCtx, runner.Config{
			Conn: p.conn, DataRoot: m.dir + "/" + name + "-data", Peer: m.ids[i], PeerKey: m.keys[i],
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}, svcs...)
		if err != nil {
			return nil, err
		}
		p.runs = append(p.runs, r)
		select {
		case <-r.Ready():
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return p, nil
}

// quietWait bounds the wait for the peers to catch up before a span.
const quietWait = 5 * time.Minute

// quiesce waits until every consumer of every stream on the running peers
// has been delivered and has acknowledged everything: nothing the last
// span started is still being read.
func (m *benchMesh) quiesce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, quietWait)
	defer cancel()
	for {
		busy, err := m.busyConsumer(ctx)
		if err != nil || busy == "" {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bootstrap bench: consumer %s still behind after %s", busy, quietWait)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// busyConsumer names a consumer on a running peer with messages not yet
// delivered or acknowledged, or returns "".
func (m *benchMesh) busyConsumer(ctx context.Context) (string, error) {
	for _, p := range m.peers {
		streams := p.js.ListStreams(ctx)
		for st := range streams.Info() {
			s, err := p.js.Stream(ctx, st.Config.Name)
			if err != nil {
				return "", err
			}
			list := s.ListConsumers(ctx)
			for c := range list.Info() {
				if c.NumPending > 0 || c.NumAckPending > 0 {
					return p.name + "/" + st.Config.Name + "/" + c.Name, nil
				}
			}
			if err := list.Err(); err != nil {
				return "", err
			}
		}
		if err := streams.Err(); err != nil {
			return "", err
		}
	}
	return "", nil
}

// stop stops every peer and the hub. The measurement is over by then, so
// an error on the way down is reported but changes no figure.
func (m *benchMesh) stop() error {
	var errs []error
	for _, p := range m.peers {
		if p.cancel != nil {
			p.cancel()
		}
		for _, r := range p.runs {
			if err := r.Wait(); err != nil {
				errs = append(errs, fmt.Errorf("bootstrap bench: %s peer: %w", p.name, err))
			}
		}
		if p.conn != nil {
			p.conn.Close()
		}
		p.server.Shutdown()
		p.server.WaitForShutdown()
	}
	m.hub.Close()
	return errors.Join(errs...)
}

// load publishes facts to the peer's INGRESS, as its clients would, and
// waits until JOURNAL holds them.
func (p *peer) load(ctx context.Context, w *authority, facts []*events.Fact) error {
	for i := 0; i < len(facts); i += events.MaxBatchFacts {
		fb := &eventsv1.FactBatch{Tokens: [][]byte{w.token}}
		for _, f := range facts[i:min(i+events.MaxBatchFacts, len(facts))] {
			fb.Facts = append(fb.Facts, f.Proto())
		}
		data, _ := proto.Marshal(fb)
		if _, err := p.js.Publish(ctx, events.IngressFactSubject(w.auth), data); err != nil {
			return err
		}
	}
	return p.waitFor(ctx, w.auth, uint64(len(facts)))
}

// waitFor polls until JOURNAL holds at least n fact messages of auth.
func (p *peer) waitFor(ctx context.Context, auth events.AuthorityID, n uint64) error {
	for {
		got, err := journalCount(ctx, p.js, auth)
		if err != nil || got >= n {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// fold reads the peer's JOURNAL into documents.
func (p *peer) fold(ctx context.Context, auth events.AuthorityID) (*fold.State, error) {
	st := fold.New()
	_, err := snapshot.ScanJournal(ctx, p.js, auth, func(f *events.Fact, _ uint64) error {
		st.Apply(f)
		return nil
	}, func([]byte) {})
	return st, err
}

// ingressMessages is how many messages INGRESS ever stored.
func ingressMessages(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	s, err := js.Stream(ctx, events.StreamIngress)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

func journalCount(ctx context.Context, js jetstream.JetStream, auth events.AuthorityID) (uint64, error) {
	s, err := js.Stream(ctx, events.StreamJournal)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(events.JournalAuthorityFilter(auth)))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}
