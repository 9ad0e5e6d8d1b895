package natsbackend

import (
	"context"
	"strings"
	"sync"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/internal/peers"
	"github.com/nats-io/nats.go"
)

// discovery follows the presence heartbeats that peers publish across the
// mesh. A peer is discovered (and connected) at its first heartbeat,
// disconnected after PresenceTimeout of silence and lost after three
// times that. The connection's NATS user must be allowed to subscribe to
// presence (factsync's client role is not, today: see Start).
type discovery struct {
	b     *Backend
	table peers.Table

	mu   sync.Mutex
	sub  *nats.Subscription
	stop context.CancelFunc
	done chan struct{}
}

var _ sdk.PeerDiscovery = (*discovery)(nil)

func (d *discovery) Start(context.Context) error {
	nc, _, err := d.b.live()
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sub != nil {
		return nil
	}
	sub, err := nc.Subscribe(events.PresencePrefix+".*", d.heard)
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "subscribe to presence")
	}
	// A refused subscription comes back asynchronously: flush, then look.
	err = nc.Flush()
	if err == nil {
		err = nc.LastError()
	}
	if err != nil {
		_ = sub.Unsubscribe()
		return events.Wrap(events.ReasonNoRight, err, "subscribe to presence (this NATS user may not see peer heartbeats)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.sub, d.stop, d.done = sub, cancel, make(chan struct{})
	go d.expire(ctx)
	return nil
}

func (d *discovery) heard(m *nats.Msg) {
	id := events.PeerID(strings.TrimPrefix(m.Subject, events.PresencePrefix+"."))
	if id.Validate() != nil {
		return
	}
	d.table.Seen(id, "", d.b.clock.Now())
}

func (d *discovery) expire(ctx context.Context) {
	defer close(d.done)
	timeout := d.b.opts.PresenceTimeout
	ticker := d.b.clock.NewTicker(timeout / 3)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C():
			d.table.Expire(now, timeout, 3*timeout)
		}
	}
}

func (d *discovery) Stop() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sub == nil {
		return nil
	}
	_ = d.sub.Unsubscribe()
	d.stop()
	<-d.done
	d.sub = nil
	d.table.CloseAll()
	return nil
}

func (d *discovery) DiscoveredPeers() []sdk.PeerInfo { return d.table.List() }

// AddPeer is refused: static peers are the server's configuration, and
// the server offers clients no request to change it.
func (d *discovery) AddPeer(context.Context, string) (sdk.PeerInfo, error) {
	return sdk.PeerInfo{}, events.Errorf(events.ReasonUnsupported, "adding a peer from a client is not provided by the server; configure static peers on the factsync peer itself")
}

func (d *discovery) WaitForPeer(ctx context.Context, peer events.PeerID) (sdk.PeerInfo, error) {
	return d.table.Wait(ctx, peer)
}

func (d *discovery) Events(ctx context.Context) <-chan sdk.PeerEvent {
	return d.table.Subscribe(ctx.Done())
}

// engine is the NATS backend's SyncEngine. Sync between peers runs on the
// server (the antientropy service); the server offers clients no request
// to start, stop, force or scope it yet, so every operation says so rather
// than pretending.
type engine struct{}

var _ sdk.SyncEngine = engine{}

var errServerSideSync = events.Errorf(events.ReasonUnsupported,
	"sync runs on the factsync peer (antientropy service), which offers clients no sync requests yet; use `factsync sync` on the peer")

func (engine) Start(context.Context) error { return errServerSideSync }
func (engine) Stop() error                 { return nil }
func (engine) ForceSync(context.Context, events.PeerID) (sdk.SyncResult, error) {
	return sdk.SyncResult{}, errServerSideSync
}
func (engine) SubscribeCollections(context.Context, ...string) error { return errServerSideSync }
func (engine) IsSyncing() bool                                       { return false }
