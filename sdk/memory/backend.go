// Package memory is an in-process factsync backend for apps' unit tests.
// It has the semantics of a real client: writes are facts signed by the
// device key, folded with shared/fold and queried with shared/query, the
// same code the journal runs. Several backends on one Network discover
// each other and sync their fact sets, so tests can exercise offline
// edits, partitions and convergence without a server.
//
// It does not verify Biscuit tokens (there is no guard); it does verify
// every fact's signature and that it belongs to the backend's authority.
package memory

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/fold"
)

// Options configures a memory backend.
type Options struct {
	// Network links this backend with others in the process. Nil means a
	// private network: the backend syncs with nobody.
	Network *Network
	// SyncInterval is how often a started SyncEngine reconciles with every
	// connected peer besides pushing writes live; zero means
	// DefaultSyncInterval.
	SyncInterval time.Duration
}

// DefaultSyncInterval is the default period of full reconciliation.
const DefaultSyncInterval = 5 * time.Second

// Backend is an in-memory DataSyncBackend.
type Backend struct {
	opts Options
	peer events.PeerID

	mu     sync.RWMutex
	ready  bool
	cfg    sdk.Config
	clock  clock.Clock
	signer *sdk.Signer
	facts  map[events.FactID]*events.Fact
	tokens map[string][]byte // by hex hash
	state  *fold.State
	seq    uint64 // counts visible changes, for observations

	observers sdk.Observers
	store     *store
	discovery *discovery
	engine    *engine
}

var _ sdk.DataSyncBackend = (*Backend)(nil)

// New returns an uninitialized backend with a fresh peer identity.
func New(opts Options) *Backend {
	if opts.Network == nil {
		opts.Network = NewNetwork()
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = DefaultSyncInterval
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	b := &Backend{opts: opts, peer: events.PeerIDOf(pub)}
	b.store = &store{b: b}
	b.discovery = &discovery{b: b}
	b.engine = &engine{b: b}
	return b
}

// Initialize implements sdk.DataSyncBackend.
func (b *Backend) Initialize(_ context.Context, cfg sdk.Config) error {
	signer, err := sdk.NewSigner(cfg)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ready || b.state != nil {
		return events.Errorf(events.ReasonConflict, "memory backend is already initialized")
	}
	b.cfg, b.clock, b.signer = cfg, cfg.TimeSource(), signer
	b.facts = map[events.FactID]*events.Fact{}
	b.tokens = map[string][]byte{}
	b.state = fold.New()
	b.ready = true
	return nil
}

// Shutdown implements sdk.DataSyncBackend.
func (b *Backend) Shutdown(context.Context) error {
	_ = b.engine.Stop()
	_ = b.discovery.Stop()
	b.mu.Lock()
	b.ready = false
	b.mu.Unlock()
	b.observers.CloseAll()
	return nil
}

// DocumentStore implements sdk.DataSyncBackend.
func (b *Backend) DocumentStore() sdk.DocumentStore { return b.store }

// PeerDiscovery implements sdk.DataSyncBackend.
func (b *Backend) PeerDiscovery() sdk.PeerDiscovery { return b.discovery }

// SyncEngine implements sdk.DataSyncBackend.
func (b *Backend) SyncEngine() sdk.SyncEngine { return b.engine }

// IsReady implements sdk.DataSyncBackend.
func (b *Backend) IsReady() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.ready
}

// Info implements sdk.DataSyncBackend.
func (b *Backend) Info() sdk.BackendInfo {
	b.mu.RLock()
	defer b.mu.RUnlock()
	info := sdk.BackendInfo{Name: "memory", Peer: b.peer, Endpoint: "memory://" + string(b.peer)}
	if b.signer != nil {
		info.Authority, info.Device = b.cfg.Authority(), b.cfg.Device()
	}
	return info
}

// Peer returns the backend's peer id, the address other backends on its
// Network add it by.
func (b *Backend) Peer() events.PeerID { return b.peer }

// FactIDs returns the ids of every fact the backend holds, for tests that
// compare replicas.
func (b *Backend) FactIDs() []events.FactID {
	b.mu.RLock()
	defer b.mu.RUnlock()
	ids := make([]events.FactID, 0, len(b.facts))
	for id := range b.facts {
		ids = append(ids, id)
	}
	return ids
}

// Digest returns the digest of the folded state (fold.State.Digest): equal
// on two backends exactly when they show the same documents.
func (b *Backend) Digest() [32]byte {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.state == nil {
		return [32]byte{}
	}
	return b.state.Digest()
}

var errNotReady = events.Errorf(events.ReasonUnavailable, "memory backend is not initialized or has shut down")

// ready returns nil when the backend can serve. Lock must be held.
func (b *Backend) checkReady() error {
	if !b.ready {
		return errNotReady
	}
	return nil
}

// ingest adds facts to the set and folds the new ones, telling observers
// about visible changes. It returns the facts that were new. Facts of
// another authority, or whose signature does not verify, are refused.
func (b *Backend) ingest(facts []*events.Fact, tokens [][]byte) ([]*events.Fact, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.checkReady(); err != nil {
		return nil, err
	}
	auth := b.cfg.Authority()
	for _, f := range facts {
		if f.Authority != auth {
			return nil, events.Errorf(events.ReasonNoRight, "fact %s belongs to authority %s, not %s", f.ID, f.Authority, auth)
		}
		if err := f.VerifySignature(); err != nil {
			return nil, err
		}
	}
	for _, t := range tokens {
		b.tokens[events.TokenHash(t)] = t
	}
	var fresh []*events.Fact
	for _, f := range facts {
		if _, ok := b.facts[f.ID]; ok {
			continue
		}
		b.facts[f.ID] = f
		fresh = append(fresh, f)
		b.signer.Observe(f.HLC)
		if change, visible := b.state.Apply(f); visible {
			b.seq++
			b.observers.Notify(change.After, b.seq)
		}
	}
	return fresh, nil
}

// write signs writes, ingests them and pushes them to connected peers.
func (b *Backend) write(writes []sdk.Write) ([]sdk.WriteResult, error) {
	b.mu.RLock()
	err := b.checkReady()
	signer := b.signer
	b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	facts, err := signer.Sign(writes...)
	if err != nil {
		return nil, err
	}
	fresh, err := b.ingest(facts, [][]byte{signer.Token()})
	if err != nil {
		return nil, err
	}
	b.engine.push(fresh)
	results := make([]sdk.WriteResult, len(facts))
	for i, f := range facts {
		results[i] = sdk.ResultOf(f)
	}
	return results, nil
}

// now reads the configured clock (the wall clock before Initialize).
func (b *Backend) now() time.Time {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.clock == nil {
		return clock.Real{}.Now()
	}
	return b.clock.Now()
}
