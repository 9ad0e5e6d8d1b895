package snapshot

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// BenchConfig says what `factsync bench bootstrap` measures.
type BenchConfig struct {
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
}

// BenchResult is what `factsync bench bootstrap --json` prints. Both
// bootstraps run in the same process against the same source peer, each
// into a fresh peer (embedded server with fsync, guard), and end when the
// new peer's JOURNAL folds to the source's documents.
type BenchResult struct {
	Facts         int     `json:"facts"`
	Documents     int     `json:"documents"`
	SnapshotFacts int     `json:"snapshot_facts"`
	AfterCutFacts int     `json:"after_cut_facts"`
	SnapshotBytes int64   `json:"snapshot_bytes"`
	CreateSeconds float64 `json:"create_seconds"`
	// SnapshotSeconds: fetch through the source's guard, verify, load into
	// INGRESS, wait for the guard, then reconcile the range after the cut
	// with negentropy and load what it finds.
	SnapshotSeconds float64 `json:"snapshot_bootstrap_seconds"`
	// ReplaySeconds: reconcile the whole range with negentropy and load
	// every fact of the history.
	ReplaySeconds float64 `json:"replay_seconds"`
	Speedup       float64 `json:"speedup"`
	GOMAXPROCS    int     `json:"gomaxprocs"`
}

// Bench times a new peer converging from a snapshot against the same peer
// replaying every fact, in one run.
func Bench(ctx context.Context, cfg BenchConfig) (res BenchResult, err error) {
	if cfg.Facts <= 0 {
		cfg.Facts = 20000
	}
	if cfg.HistoryPerLive <= 0 {
		cfg.HistoryPerLive = 10
	}
	if cfg.AfterCut <= 0 || cfg.AfterCut >= 1 {
		cfg.AfterCut = 0.01
	}
	if cfg.StoreDir == "" {
		dir, err := os.MkdirTemp("", "factsync-bench-bootstrap-")
		if err != nil {
			return BenchResult{}, err
		}
		defer os.RemoveAll(dir)
		cfg.StoreDir = dir
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5eed))
	docs := max(cfg.Facts/cfg.HistoryPerLive, 1)
	w, history, herr := benchHistory(rng, cfg.Facts, docs)
	if herr != nil {
		return res, herr
	}
	cut := history[int(float64(len(history))*(1-cfg.AfterCut))].HLC.Seconds()
	res = BenchResult{Facts: cfg.Facts, Documents: docs, GOMAXPROCS: runtime.GOMAXPROCS(0)}

	peers := &benchPeers{rng: rng, dir: cfg.StoreDir}
	defer func() {
		if stopErr := peers.stop(); err == nil {
			err = stopErr
		}
	}()
	src, err := peers.start(ctx, "source", true)
	if err != nil {
		return res, err
	}
	if err := src.load(ctx, w, history); err != nil {
		return res, err
	}
	byID := make(map[events.FactID]*events.Fact, len(history))
	var srcIndex negentropy.Index
	want := fold.New()
	for _, f := range history {
		byID[f.ID] = f
		srcIndex.Insert(ItemOf(f))
		want.Apply(f)
	}

	start := time.Now()
	info, err := src.snap.Create(ctx, w.auth.ID(), cut, w.creds)
	if err != nil {
		return res, err
	}
	res.CreateSeconds = time.Since(start).Seconds()
	res.SnapshotFacts, res.SnapshotBytes = int(info.Facts), info.ContentSize

	// Bootstrap from the snapshot.
	boot, err := peers.start(ctx, "snapshot", true)
	if err != nil {
		return res, err
	}
	start = time.Now()
	source := PeerSource{Conn: src.conn, Credentials: w.creds, Timeout: time.Minute}
	if _, err := boot.snap.Restore(ctx, w.auth.ID(), source); err != nil {
		return res, err
	}
	late, err := boot.reconcile(ctx, w.auth.ID(), &srcIndex, byID, cut)
	if err != nil {
		return res, err
	}
	if err := boot.load(ctx, w, late); err != nil {
		return res, err
	}
	res.SnapshotSeconds = time.Since(start).Seconds()
	res.AfterCutFacts = len(late)

	// Bootstrap by replaying every fact.
	replay, err := peers.start(ctx, "replay", false)
	if err != nil {
		return res, err
	}
	start = time.Now()
	all, err := replay.reconcile(ctx, w.auth.ID(), &srcIndex, byID, 0)
	if err != nil {
		return res, err
	}
	if err := replay.load(ctx, w, all); err != nil {
		return res, err
	}
	res.ReplaySeconds = time.Since(start).Seconds()
	res.Speedup = res.ReplaySeconds / res.SnapshotSeconds

	for _, p := range []*benchPeer{boot, replay} {
		st, _, err := p.fold(ctx, w.auth.ID())
		if err != nil {
			return res, err
		}
		if st.Digest() != want.Digest() {
			return res, fmt.Errorf("snapshot bench: the %s peer did not converge to the source's documents", p.name)
		}
	}
	return res, nil
}

// benchAuthority is the bench's writer.
type benchAuthority struct {
	auth  authKey
	creds Credentials
}

type authKey ed25519.PublicKey

func (k authKey) ID() events.AuthorityID { return events.AuthorityIDOf(ed25519.PublicKey(k)) }

// benchHistory writes n puts over docs documents, round robin, in the hour
// before now: each document's last put is its live state.
func benchHistory(rng *rand.Rand, n, docs int) (*benchAuthority, []*events.Fact, error) {
	key := func() ed25519.PrivateKey {
		var seed [ed25519.SeedSize]byte
		for i := range seed {
			seed[i] = byte(rng.UintN(256))
		}
		return ed25519.NewKeyFromSeed(seed[:])
	}
	authPriv, devPriv := key(), key()
	authPub := authPriv.Public().(ed25519.PublicKey)
	rights, _ := capability.ParseRights([]string{"*:write", "*:snapshot", "*:sync"})
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
	return &benchAuthority{auth: authKey(authPub), creds: Credentials{Token: token, AuthorityKey: authPub}}, out, nil
}

// benchPeers starts and stops the bench's peers.
type benchPeers struct {
	rng   *rand.Rand
	dir   string
	peers []*benchPeer
}

// benchPeer is an embedded server with a guard and, optionally, a
// snapshot service that needs no approver but itself.
type benchPeer struct {
	name   string
	server *server.Server
	conn   *nats.Conn
	js     jetstream.JetStream
	snap   *Service
	cancel context.CancelFunc
	done   []chan error
}

func (ps *benchPeers) start(ctx context.Context, name string, withSnapshot bool) (*benchPeer, error) {
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: ps.dir + "/" + name, Port: -1})
	if err != nil {
		return nil, err
	}
	p := &benchPeer{name: name, server: ns}
	ps.peers = append(ps.peers, p)
	if p.conn, err = nats.Connect(ns.ClientURL()); err != nil {
		return nil, err
	}
	if p.js, err = jetstream.New(p.conn); err != nil {
		return nil, err
	}
	var seed [ed25519.SeedSize]byte
	for i := range seed {
		seed[i] = byte(ps.rng.UintN(256))
	}
	key := ed25519.NewKeyFromSeed(seed[:])
	svcs := []service.Service{guard.New(guard.Config{})}
	if withSnapshot {
		p.snap = New(Config{Default: Policy{Threshold: 1}, EveryFacts: -1, EveryTime: -1, SettleTimeout: 10 * time.Minute})
		svcs = append(svcs, p.snap)
	}
	runCtx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	for _, svc := range svcs {
		if err := bus.Provision(ctx, p.js, svc.Streams()...); err != nil {
			return nil, err
		}
		ready, done := make(chan struct{}), make(chan error, 1)
		p.done = append(p.done, done)
		env := &service.Env{
			Conn: p.conn, JS: p.js, Clock: clock.Real{},
			Log:  slog.New(slog.NewTextHandler(io.Discard, nil)),
			Peer: events.PeerIDOf(key.Public().(ed25519.PublicKey)), PeerKey: key,
			DataDir: ps.dir + "/" + name + "-" + svc.Name(),
			Ready:   func() { close(ready) },
		}
		go func() { done <- svc.Run(runCtx, env) }()
		select {
		case <-ready:
		case err := <-done:
			return nil, fmt.Errorf("snapshot bench: %s %s stopped: %v", name, svc.Name(), err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return p, nil
}

// stop stops every peer. The measurement is over by then, so a service's
// error on the way down is reported but changes no figure.
func (ps *benchPeers) stop() error {
	var errs []error
	for _, p := range ps.peers {
		if p.cancel != nil {
			p.cancel()
		}
		for _, d := range p.done {
			if err := <-d; err != nil {
				errs = append(errs, fmt.Errorf("snapshot bench: %s peer: %w", p.name, err))
			}
		}
		if p.conn != nil {
			p.conn.Close()
		}
		p.server.Shutdown()
		p.server.WaitForShutdown()
	}
	return errors.Join(errs...)
}

// load publishes facts to the peer's INGRESS, as anti-entropy would after
// learning what it needs, and waits until JOURNAL holds them.
func (p *benchPeer) load(ctx context.Context, w *benchAuthority, facts []*events.Fact) error {
	auth := w.auth.ID()
	before, err := journalCount(ctx, p.js, auth)
	if err != nil {
		return err
	}
	for i := 0; i < len(facts); i += events.MaxBatchFacts {
		fb := &eventsv1.FactBatch{Tokens: [][]byte{w.creds.Token}}
		for _, f := range facts[i:min(i+events.MaxBatchFacts, len(facts))] {
			fb.Facts = append(fb.Facts, f.Proto())
		}
		data, _ := proto.Marshal(fb)
		if _, err := p.js.Publish(ctx, events.IngressFactSubject(auth), data); err != nil {
			return err
		}
	}
	for want := before + uint64(len(facts)); ; {
		n, err := journalCount(ctx, p.js, auth)
		if err != nil || n >= want {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// reconcile indexes the peer's JOURNAL and runs negentropy against the
// source's index over the range from cut, returning the facts it lacks.
func (p *benchPeer) reconcile(ctx context.Context, auth events.AuthorityID, srcIndex *negentropy.Index, byID map[events.FactID]*events.Fact, cut uint32) ([]*events.Fact, error) {
	_, mine, err := p.fold(ctx, auth)
	if err != nil {
		return nil, err
	}
	var need []*events.Fact
	var rerr error
	mine.View(func(ms negentropy.Storage) {
		srcIndex.View(func(ss negentropy.Storage) {
			in, err := negentropy.NewInitiator(StorageAfterCut(ms, cut), negentropy.DefaultFrameSizeLimit)
			if err != nil {
				rerr = err
				return
			}
			out, err := negentropy.NewResponder(StorageAfterCut(ss, cut), negentropy.DefaultFrameSizeLimit)
			if err != nil {
				rerr = err
				return
			}
			msg, err := in.Initiate()
			for msg != nil && err == nil {
				var reply []byte
				if reply, err = out.Reconcile(msg); err == nil {
					var ids []events.FactID
					msg, _, ids, err = in.Reconcile(reply)
					for _, id := range ids {
						need = append(need, byID[id])
					}
				}
			}
			rerr = err
		})
	})
	return need, rerr
}

// fold reads the peer's JOURNAL into documents and an index.
func (p *benchPeer) fold(ctx context.Context, auth events.AuthorityID) (*fold.State, *negentropy.Index, error) {
	st, ix := fold.New(), &negentropy.Index{}
	_, err := ScanJournal(ctx, p.js, auth, func(f *events.Fact, _ uint64) error {
		st.Apply(f)
		ix.Insert(ItemOf(f))
		return nil
	}, func([]byte) {})
	return st, ix, err
}

func journalCount(ctx context.Context, js jetstream.JetStream, auth events.AuthorityID) (uint64, error) {
	s, err := js.Stream(ctx, events.StreamJournal)
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
