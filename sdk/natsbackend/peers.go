package natsbackend

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/internal/peers"
	"github.com/nats-io/nats.go"
)

// discovery follows the presence heartbeats that peers publish across the
// mesh (events.Presence on fs.presence.<peer>, core NATS: JetStream, and
// so a KV bucket with a TTL, does not cross the mesh). A peer is
// discovered (and connected) at its first heartbeat, disconnected after
// PresenceTimeout of silence (or three of its own heartbeat intervals,
// if longer) and lost after three times that. The backend's own peer,
// once known (Info), is not listed.
type discovery struct {
	b     *Backend
	table peers.Table

	mu   sync.Mutex
	sub  *nats.Subscription
	stop context.CancelFunc
	done chan struct{}

	// silence is how long each peer may stay silent before it counts as
	// disconnected. Its own lock: the table calls silenceOf while
	// locked, and Stop holds mu while it closes the table.
	silenceMu sync.Mutex
	silence   map[events.PeerID]time.Duration
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
	// A refused subscription comes back asynchronously, before the
	// flush's reply: flush, then look.
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return events.Wrap(events.ReasonUnavailable, err, "subscribe to presence")
	}
	if err := nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), events.PresencePrefix) {
		_ = sub.Unsubscribe()
		return events.Wrap(events.ReasonNoRight, err, "subscribe to presence (this NATS user may not see peer heartbeats)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.sub, d.stop, d.done = sub, cancel, make(chan struct{})
	go d.expire(ctx)
	return nil
}

func (d *discovery) heard(m *nats.Msg) {
	p, err := events.DecodePresence(m.Data)
	if err != nil || m.Subject != events.PresenceSubject(p.Peer) || p.Peer == d.b.localPeer() {
		return
	}
	silence := d.b.opts.PresenceTimeout
	// A peer that announces itself less often must not flap; an absurd
	// interval is ignored, as the anti-entropy service does.
	if every := time.Duration(p.IntervalMillis) * time.Millisecond; every > 0 && every <= time.Hour {
		silence = max(silence, 3*every)
	}
	d.silenceMu.Lock()
	if d.silence == nil {
		d.silence = map[events.PeerID]time.Duration{}
	}
	d.silence[p.Peer] = silence
	d.silenceMu.Unlock()
	d.table.Seen(p.Peer, "", d.b.clock.Now())
}

// silenceOf gives the table a peer's timeouts: disconnected after its
// silence, lost after three times that.
func (d *discovery) silenceOf(id events.PeerID) (disconnectAfter, loseAfter time.Duration) {
	d.silenceMu.Lock()
	defer d.silenceMu.Unlock()
	s, ok := d.silence[id]
	if !ok {
		s = d.b.opts.PresenceTimeout
	}
	return s, 3 * s
}

func (d *discovery) expire(ctx context.Context) {
	defer close(d.done)
	ticker := d.b.clock.NewTicker(d.b.opts.PresenceTimeout / 3)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C():
			d.table.Expire(now, d.silenceOf)
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
