package natsbackend

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/internal/peers"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// discovery follows the server's discovery state: the anti-entropy
// service records every peer heartbeat it hears in its presence bucket
// (events.PresenceBucket) with a TTL of three of the peer's intervals,
// and the bucket republishes each change on fs.discovery.<peer>, which
// clients may subscribe to (they have no JetStream API). A peer is
// discovered (and connected) at the first record, disconnected after
// PresenceTimeout of silence (or two of its own intervals, if longer),
// and lost when its key expires from the bucket (the server's marker
// comes through too). Should that notice be missed (the connection was
// down), a peer silent for twice its key's TTL is lost all the same. The
// backend's own peer, once known (Info), is not listed.
type discovery struct {
	b     *Backend
	table peers.Table

	mu   sync.Mutex
	sub  *nats.Subscription
	stop context.CancelFunc
	done chan struct{}

	// intervals holds each peer's heartbeat interval. Its own lock: the
	// table calls silenceOf while locked, and Stop holds mu while it
	// closes the table.
	intervalsMu sync.Mutex
	intervals   map[events.PeerID]time.Duration
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
	sub, err := nc.Subscribe(events.DiscoveryPrefix+".*", d.changed)
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "subscribe to the discovery state")
	}
	// A refused subscription comes back asynchronously, before the
	// flush's reply: flush, then look.
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return events.Wrap(events.ReasonUnavailable, err, "subscribe to the discovery state")
	}
	if err := nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), events.DiscoveryPrefix) {
		_ = sub.Unsubscribe()
		return events.Wrap(events.ReasonNoRight, err, "subscribe to the discovery state (this NATS user may not see "+events.DiscoveryPrefix+".>)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.sub, d.stop, d.done = sub, cancel, make(chan struct{})
	go d.expire(ctx)
	return nil
}

// changed applies one change of the presence bucket: a record is the
// peer heard; the server's marker of an expired key (Nats-Marker-Reason)
// or a delete or purge is the peer lost.
func (d *discovery) changed(m *nats.Msg) {
	id := events.PeerID(strings.TrimPrefix(m.Subject, events.DiscoveryPrefix+"."))
	if id.Validate() != nil || id == d.b.localPeer() {
		return
	}
	if m.Header.Get(jetstream.MarkerReasonHeader) != "" || m.Header.Get(kvOperationHeader) != "" {
		d.table.Lost(id)
		d.intervalsMu.Lock()
		delete(d.intervals, id)
		d.intervalsMu.Unlock()
		return
	}
	var rec events.PresenceRecord
	if json.Unmarshal(m.Data, &rec) != nil || rec.Peer != id {
		return
	}
	d.intervalsMu.Lock()
	if d.intervals == nil {
		d.intervals = map[events.PeerID]time.Duration{}
	}
	d.intervals[id] = time.Duration(rec.IntervalMillis) * time.Millisecond
	d.intervalsMu.Unlock()
	d.table.Seen(id, "", d.b.clock.Now())
}

// kvOperationHeader marks a key-value delete or purge (the server's own
// header name; nats.go does not export it).
const kvOperationHeader = "KV-Operation"

// silenceOf gives the table a peer's timeouts: disconnected after
// PresenceTimeout or two of its intervals, whichever is longer; lost, if
// the bucket's notice never came, after twice its key's TTL.
func (d *discovery) silenceOf(id events.PeerID) (disconnectAfter, loseAfter time.Duration) {
	d.intervalsMu.Lock()
	every, ok := d.intervals[id]
	d.intervalsMu.Unlock()
	if !ok || every <= 0 {
		every = d.b.opts.PresenceTimeout
	}
	disconnectAfter = max(d.b.opts.PresenceTimeout, 2*every)
	return disconnectAfter, max(disconnectAfter, 2*events.PresenceTTL(every))
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

// AddPeer asks the server to add a static peer (address is its PeerID):
// the anti-entropy service keeps it in its static-peer bucket and syncs
// with it at once and on every interval. The request goes through the
// guard and needs the `sync` right. A malformed id, or the server's own,
// is refused malformed; an id no peer answers for on the mesh not_found.
func (d *discovery) AddPeer(ctx context.Context, address string) (sdk.PeerInfo, error) {
	id := events.PeerID(address)
	if err := id.Validate(); err != nil {
		return sdk.PeerInfo{}, err
	}
	var st events.PeerStatus
	if err := d.b.call(ctx, events.AntiEntropyProto, events.AntiEntropyOpAddPeer, events.AddPeerRequest{Peer: id}, &st); err != nil {
		return sdk.PeerInfo{}, err
	}
	// It answered, or is present: reachable now.
	return d.table.Seen(id, address, d.b.clock.Now()), nil
}

func (d *discovery) WaitForPeer(ctx context.Context, peer events.PeerID) (sdk.PeerInfo, error) {
	return d.table.Wait(ctx, peer)
}

func (d *discovery) Events(ctx context.Context) <-chan sdk.PeerEvent {
	return d.table.Subscribe(ctx.Done())
}
