package memory

import (
	"context"
	"sync"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/internal/peers"
)

// Network links in-process backends as peers, the way a NATS mesh links
// sites. A backend joins when its PeerDiscovery starts and leaves when it
// stops. Cut and Heal partition and rejoin pairs of peers, for tests of
// offline edits and convergence. It is safe for concurrent use.
type Network struct {
	mu      sync.Mutex
	members map[events.PeerID]*Backend
	cut     map[link]bool
}

type link struct{ a, b events.PeerID }

func linkOf(a, b events.PeerID) link {
	if a > b {
		a, b = b, a
	}
	return link{a, b}
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{members: map[events.PeerID]*Backend{}, cut: map[link]bool{}}
}

// Cut partitions a and b: each sees the other disconnect, and nothing
// moves between them until Heal.
func (n *Network) Cut(a, b events.PeerID) {
	n.mu.Lock()
	n.cut[linkOf(a, b)] = true
	ba, bb := n.members[a], n.members[b]
	n.mu.Unlock()
	if ba != nil && bb != nil {
		ba.discovery.table.Disconnected(b)
		bb.discovery.table.Disconnected(a)
	}
}

// Heal undoes Cut. Each side sees the other connect, which makes a
// started SyncEngine reconcile with it.
func (n *Network) Heal(a, b events.PeerID) {
	n.mu.Lock()
	delete(n.cut, linkOf(a, b))
	ba, bb := n.members[a], n.members[b]
	n.mu.Unlock()
	if ba != nil && bb != nil {
		ba.discovery.sawPeer(bb)
		bb.discovery.sawPeer(ba)
	}
}

// reachable returns peer's backend when both are members and the link
// between them is not cut.
func (n *Network) reachable(from, peer events.PeerID) (*Backend, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, in := n.members[from]
	p, ok := n.members[peer]
	return p, in && ok && !n.cut[linkOf(from, peer)]
}

// join adds b and introduces it to every member it can reach.
func (n *Network) join(b *Backend) {
	n.mu.Lock()
	n.members[b.peer] = b
	var others []*Backend
	for id, m := range n.members {
		if id != b.peer && !n.cut[linkOf(id, b.peer)] {
			others = append(others, m)
		}
	}
	n.mu.Unlock()
	for _, m := range others {
		b.discovery.sawPeer(m)
		m.discovery.sawPeer(b)
	}
}

// leave removes b; every member loses it.
func (n *Network) leave(b *Backend) {
	n.mu.Lock()
	delete(n.members, b.peer)
	var others []*Backend
	for _, m := range n.members {
		others = append(others, m)
	}
	n.mu.Unlock()
	for _, m := range others {
		m.discovery.table.Lost(b.peer)
	}
}

// discovery is the backend's PeerDiscovery: the members of its Network.
type discovery struct {
	b     *Backend
	table peers.Table

	mu      sync.Mutex
	started bool
}

var _ sdk.PeerDiscovery = (*discovery)(nil)

func (d *discovery) Start(context.Context) error {
	if !d.b.IsReady() {
		return errNotReady
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.started {
		d.started = true
		d.b.opts.Network.join(d.b)
	}
	return nil
}

func (d *discovery) Stop() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.started {
		d.started = false
		d.b.opts.Network.leave(d.b)
		for _, p := range d.table.List() {
			d.table.Lost(p.ID)
		}
	}
	return nil
}

func (d *discovery) DiscoveredPeers() []sdk.PeerInfo { return d.table.List() }

// AddPeer adds a backend of the same Network by its peer id (the address
// is the id), as a server adds a static peer: the peer must be reachable
// now (it has started its discovery, and no Cut separates them), else
// not_found; a malformed id or the backend's own is malformed. A started
// SyncEngine reconciles with a peer that connects.
func (d *discovery) AddPeer(_ context.Context, address string) (sdk.PeerInfo, error) {
	if !d.b.IsReady() {
		return sdk.PeerInfo{}, errNotReady
	}
	id := events.PeerID(address)
	if err := id.Validate(); err != nil {
		return sdk.PeerInfo{}, err
	}
	if id == d.b.peer {
		return sdk.PeerInfo{}, events.Errorf(events.ReasonMalformed, "peer %s is this backend itself", id)
	}
	p, ok := d.b.opts.Network.reachable(d.b.peer, id)
	if !ok {
		return sdk.PeerInfo{}, events.Errorf(events.ReasonNotFound, "peer %s is not reachable on this network (not started, cut off, or this backend's discovery is stopped)", id)
	}
	p.discovery.sawPeer(d.b)
	return d.sawPeer(p), nil
}

func (d *discovery) WaitForPeer(ctx context.Context, peer events.PeerID) (sdk.PeerInfo, error) {
	return d.table.Wait(ctx, peer)
}

func (d *discovery) Events(ctx context.Context) <-chan sdk.PeerEvent {
	return d.table.Subscribe(ctx.Done())
}

func (d *discovery) sawPeer(p *Backend) sdk.PeerInfo {
	return d.table.Seen(p.peer, "memory://"+string(p.peer), d.b.now())
}
