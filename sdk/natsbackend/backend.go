// Package natsbackend is the sdk.DataSyncBackend that talks to a running
// factsync over NATS:
//
//   - writes are facts signed by the device, published in batches (each
//     with its token once) to INGRESS with JetStream, a Nats-Msg-Id per
//     batch so a retried publish is stored once; Upsert then waits until
//     the journal has folded the fact (read-your-writes);
//   - reads are requests to the journal through the guard, carrying the
//     device token and the authority key;
//   - observations follow the journal's change notifications after an
//     initial query;
//   - peer discovery follows presence heartbeats;
//   - sync is the server's anti-entropy service, which the SyncEngine
//     drives through its control requests (sync.go).
//
// Error replies come back as *events.Error with the server's reason code.
package natsbackend

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
)

// Options says how to reach factsync.
type Options struct {
	// Conn is an open connection to use; the backend does not close it.
	// Without it the backend dials URL with NATSOptions.
	Conn        *nats.Conn
	URL         string
	NATSOptions []nats.Option
	// RequestTimeout bounds one journal request; default 10s.
	RequestTimeout time.Duration
	// VisibleTimeout bounds how long a write waits until the journal
	// shows it; default 30s. A write the guard denied never shows, so
	// this is also how long such a write takes to fail.
	VisibleTimeout time.Duration
	// AcceptedOnly makes writes return once INGRESS has stored them,
	// without waiting until they are queryable.
	AcceptedOnly bool
	// Publishers is how many batches may be in flight to INGRESS at once;
	// default 4.
	Publishers int
	// PresenceTimeout is how long a silent peer stays connected (at
	// least two of the heartbeat intervals it announces); it is lost
	// when the server's presence bucket drops it, three of its
	// intervals after its last heartbeat. Discovery checks every third
	// of it. Default 10s.
	PresenceTimeout time.Duration
	// StatusInterval is how often a started SyncEngine asks the server
	// whether it still syncs the authority (IsSyncing); default 10s.
	StatusInterval time.Duration
	// SyncTimeout bounds a sync request (ForceSync without a deadline, a
	// started engine's sync after a write); default 30s.
	SyncTimeout time.Duration
	// TracerProvider traces each INGRESS batch as a child of the writing
	// call's span, and the trace continues through the guard, JOURNAL,
	// the journal and receipts. Default: the otel global provider.
	TracerProvider trace.TracerProvider
}

func (o Options) withDefaults() Options {
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.VisibleTimeout <= 0 {
		o.VisibleTimeout = 30 * time.Second
	}
	if o.Publishers <= 0 {
		o.Publishers = 4
	}
	if o.PresenceTimeout <= 0 {
		o.PresenceTimeout = 10 * time.Second
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = 10 * time.Second
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = 30 * time.Second
	}
	if o.TracerProvider == nil {
		o.TracerProvider = otel.GetTracerProvider()
	}
	return o
}

// Backend is the NATS DataSyncBackend.
type Backend struct {
	opts Options

	mu      sync.RWMutex
	ready   bool
	cfg     sdk.Config
	clock   clock.Clock
	signer  *sdk.Signer
	nc      *nats.Conn
	ownConn bool
	headers nats.Header // token and authority key, copied onto every request
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	publisher *publisher
	changes   *changeFeed
	observers sdk.Observers
	store     *store
	discovery *discovery
	engine    *engine

	peerMu sync.Mutex
	peer   events.PeerID // the server's peer, once learned (Info)
}

var _ sdk.DataSyncBackend = (*Backend)(nil)

// New returns an uninitialized backend.
func New(opts Options) *Backend {
	b := &Backend{opts: opts.withDefaults()}
	b.store = &store{b: b}
	b.discovery = &discovery{b: b}
	b.engine = newEngine(b)
	return b
}

var errNotReady = events.Errorf(events.ReasonUnavailable, "nats backend is not initialized or has shut down")

// Initialize connects, subscribes to the authority's changes, starts the
// INGRESS publishers, and learns the server's peer id (Info) when the
// device may see it.
func (b *Backend) Initialize(ctx context.Context, cfg sdk.Config) error {
	if err := b.connect(ctx, cfg); err != nil {
		return err
	}
	// A device without `sync`, or a server without anti-entropy, leaves
	// the peer unknown; nothing else depends on it.
	_, _ = b.syncStatus(ctx)
	return nil
}

func (b *Backend) connect(ctx context.Context, cfg sdk.Config) error {
	signer, err := sdk.NewSigner(cfg)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ready || b.signer != nil {
		return events.Errorf(events.ReasonConflict, "nats backend is already initialized")
	}
	nc, own := b.opts.Conn, false
	if nc == nil {
		if b.opts.URL == "" {
			return events.Errorf(events.ReasonMalformed, "nats backend needs a connection or a URL")
		}
		if nc, err = nats.Connect(b.opts.URL, b.opts.NATSOptions...); err != nil {
			return events.Wrap(events.ReasonUnavailable, err, "connect to "+b.opts.URL)
		}
		own = true
	}
	js, err := jetstream.New(nc)
	if err != nil {
		if own {
			nc.Close()
		}
		return events.Wrap(events.ReasonUnavailable, err, "jetstream")
	}
	b.headers = nats.Header{}
	b.headers.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(cfg.Token))
	b.headers.Set(events.HeaderAuthorityKey, hex.EncodeToString(cfg.AuthorityKey))

	changes, err := subscribeChanges(nc, cfg.Authority(), &b.observers, signer.Observe)
	if err != nil {
		if own {
			nc.Close()
		}
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	b.cfg, b.clock, b.signer, b.nc, b.ownConn, b.cancel = cfg, cfg.TimeSource(), signer, nc, own, cancel
	b.changes = changes
	b.publisher = newPublisher(js, signer, b.opts.Publishers, b.opts.TracerProvider.Tracer("github.com/factsync/factsync/sdk/natsbackend"))
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.publisher.run(runCtx)
	}()
	b.ready = true
	return nil
}

// learnPeer records the server's peer id and drops it from discovery,
// which may have heard its heartbeat before the id was known.
func (b *Backend) learnPeer(id events.PeerID) {
	b.peerMu.Lock()
	known := b.peer == id
	b.peer = id
	b.peerMu.Unlock()
	if !known {
		b.discovery.table.Forget(id)
	}
}

// localPeer is the server's peer id, empty until learned.
func (b *Backend) localPeer() events.PeerID {
	b.peerMu.Lock()
	defer b.peerMu.Unlock()
	return b.peer
}

// Shutdown ends observations, discovery, the sync engine and publishing
// and closes the connection the backend opened.
func (b *Backend) Shutdown(context.Context) error {
	_ = b.discovery.Stop()
	_ = b.engine.Stop()
	b.mu.Lock()
	if !b.ready {
		b.mu.Unlock()
		return nil
	}
	b.ready = false
	cancel, nc, own, changes := b.cancel, b.nc, b.ownConn, b.changes
	b.mu.Unlock()
	b.observers.CloseAll()
	cancel()
	b.wg.Wait()
	changes.close()
	if own {
		nc.Close()
	}
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

// Info implements sdk.DataSyncBackend. Peer is the server's peer id,
// which the anti-entropy service's status tells a device holding `sync`
// (asked at Initialize and whenever the SyncEngine asks); it stays empty
// for a device without that right.
func (b *Backend) Info() sdk.BackendInfo {
	b.mu.RLock()
	defer b.mu.RUnlock()
	info := sdk.BackendInfo{Name: "nats", Endpoint: b.opts.URL, Peer: b.localPeer()}
	if b.nc != nil {
		info.Endpoint = b.nc.ConnectedUrlRedacted()
	}
	if b.signer != nil {
		info.Authority, info.Device = b.cfg.Authority(), b.cfg.Device()
	}
	return info
}

// live returns the parts a call needs, or errNotReady.
func (b *Backend) live() (*nats.Conn, *sdk.Signer, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if !b.ready {
		return nil, nil, errNotReady
	}
	return b.nc, b.signer, nil
}
