package memory

import (
	"context"
	"sync"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

// engine is the backend's SyncEngine. Started, it pushes every new fact to
// the connected peers at once (which forward what is new to them), and
// reconciles whole fact sets with a peer when it connects and every
// SyncInterval, so peers that were cut off converge when they meet again.
type engine struct {
	b *Backend

	mu          sync.Mutex
	running     bool
	stop        context.CancelFunc
	done        chan struct{}
	collections map[string]bool // empty: every collection
}

var _ sdk.SyncEngine = (*engine)(nil)

func (e *engine) Start(context.Context) error {
	if !e.b.IsReady() {
		return errNotReady
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.running, e.stop, e.done = true, cancel, make(chan struct{})
	connects := e.b.discovery.table.Subscribe(ctx.Done())
	go e.run(ctx, connects)
	return nil
}

func (e *engine) run(ctx context.Context, peerEvents <-chan sdk.PeerEvent) {
	defer close(e.done)
	ticker := e.b.clock.NewTicker(e.b.opts.SyncInterval)
	defer ticker.Stop()
	e.syncAll(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-peerEvents:
			if !ok {
				return
			}
			if ev.Kind == sdk.PeerConnected {
				_, _ = e.ForceSync(ctx, ev.Peer.ID)
			}
		case <-ticker.C():
			e.syncAll(ctx)
		}
	}
}

func (e *engine) syncAll(ctx context.Context) {
	for _, p := range e.b.discovery.table.List() {
		if p.Connected {
			_, _ = e.ForceSync(ctx, p.ID)
		}
	}
}

func (e *engine) Stop() error {
	e.mu.Lock()
	if !e.running {
		e.mu.Unlock()
		return nil
	}
	e.running = false
	stop, done := e.stop, e.done
	e.mu.Unlock()
	stop()
	<-done
	return nil
}

func (e *engine) IsSyncing() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.running
}

func (e *engine) SubscribeCollections(_ context.Context, collections ...string) error {
	for _, c := range collections {
		if err := events.CheckName("collection", c); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.collections == nil {
		e.collections = map[string]bool{}
	}
	for _, c := range collections {
		e.collections[c] = true
	}
	return nil
}

// wants reports whether this engine accepts facts of collection.
func (e *engine) wants(collection string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.collections) == 0 || e.collections[collection]
}

// ForceSync reconciles both ways with peer: each side receives the facts
// it lacks in the collections it subscribed to. In process, the exchange
// of fact-id sets is one round and the facts the other round; the bytes
// reported are what that exchange would carry: 32 per id offered, and
// the facts' and tokens' bytes.
func (e *engine) ForceSync(ctx context.Context, peer events.PeerID) (sdk.SyncResult, error) {
	if err := ctx.Err(); err != nil {
		return sdk.SyncResult{}, events.Wrap(events.ReasonUnavailable, err, "sync abandoned")
	}
	if !e.b.IsReady() {
		return sdk.SyncResult{}, errNotReady
	}
	if err := peer.Validate(); err != nil {
		return sdk.SyncResult{}, err
	}
	p, ok := e.b.opts.Network.reachable(e.b.peer, peer)
	if !ok {
		return sdk.SyncResult{}, events.Errorf(events.ReasonUnavailable, "peer %s is not reachable (not on this network, cut off, or discovery stopped)", peer)
	}
	in, err := transfer(p, e.b)
	if err != nil {
		return sdk.SyncResult{}, err
	}
	out, err := transfer(e.b, p)
	if err != nil {
		return sdk.SyncResult{}, err
	}
	return sdk.SyncResult{
		Peer: peer, Sent: out.facts, Received: in.facts, Rounds: 2, Mode: "memory",
		BytesSent:     in.idBytes + out.factBytes,
		BytesReceived: out.idBytes + in.factBytes,
	}, nil
}

// moved is what one transfer carried: the ids the receiver offered, and
// the facts (with their tokens) it lacked.
type moved struct {
	facts              int // new to the receiver
	idBytes, factBytes int
}

// transfer moves the facts that from has and to lacks, in the collections
// to wants, with the tokens they cite.
func transfer(from, to *Backend) (moved, error) {
	to.mu.RLock()
	known := make(map[events.FactID]bool, len(to.facts))
	for id := range to.facts {
		known[id] = true
	}
	to.mu.RUnlock()
	m := moved{idBytes: len(known) * len(events.FactID{})}
	facts, tokens := from.factsNotIn(known, to.engine.wants)
	if len(facts) == 0 {
		return m, nil
	}
	for _, f := range facts {
		m.factBytes += len(f.Body) + len(f.Signature)
	}
	for _, t := range tokens {
		m.factBytes += len(t)
	}
	fresh, err := to.ingest(facts, tokens)
	if err != nil {
		return m, err
	}
	to.engine.push(fresh)
	m.facts = len(fresh)
	return m, nil
}

// factsNotIn returns b's facts missing from known in collections want
// accepts, and the tokens they cite.
func (b *Backend) factsNotIn(known map[events.FactID]bool, want func(string) bool) ([]*events.Fact, [][]byte) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	var facts []*events.Fact
	cited := map[string]bool{}
	var tokens [][]byte
	for id, f := range b.facts {
		if known[id] || !want(f.Collection()) {
			continue
		}
		facts = append(facts, f)
		if h := f.TokenHash(); !cited[h] {
			cited[h] = true
			if t, ok := b.tokens[h]; ok {
				tokens = append(tokens, t)
			}
		}
	}
	return facts, tokens
}

// push sends new facts to every connected peer at once, when started.
func (e *engine) push(facts []*events.Fact) {
	if len(facts) == 0 || !e.IsSyncing() {
		return
	}
	for _, p := range e.b.discovery.table.List() {
		peer, ok := e.b.opts.Network.reachable(e.b.peer, p.ID)
		if !p.Connected || !ok {
			continue
		}
		var wanted []*events.Fact
		for _, f := range facts {
			if peer.engine.wants(f.Collection()) {
				wanted = append(wanted, f)
			}
		}
		if len(wanted) == 0 {
			continue
		}
		e.b.mu.RLock()
		tokens := make([][]byte, 0, 1)
		seen := map[string]bool{}
		for _, f := range wanted {
			if h := f.TokenHash(); !seen[h] {
				seen[h] = true
				tokens = append(tokens, e.b.tokens[h])
			}
		}
		e.b.mu.RUnlock()
		if fresh, err := peer.ingest(wanted, tokens); err == nil {
			peer.engine.push(fresh)
		}
	}
}
