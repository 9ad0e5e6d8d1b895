// Package peers keeps what a backend's PeerDiscovery knows: the peers, their
// state, and the subscribers to peer events. Both backends share it so
// their discovery events mean the same thing.
package peers

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

// Table is a set of known peers. The zero value is ready to use.
type Table struct {
	mu      sync.Mutex
	peers   map[events.PeerID]sdk.PeerInfo
	subs    map[*subscriber]struct{}
	changed chan struct{} // closed and replaced on every change
}

type subscriber struct {
	ch   chan sdk.PeerEvent
	done <-chan struct{}
}

func (t *Table) init() {
	if t.peers == nil {
		t.peers = map[events.PeerID]sdk.PeerInfo{}
		t.subs = map[*subscriber]struct{}{}
		t.changed = make(chan struct{})
	}
}

// Seen records that peer is reachable now: PeerDiscovered the first time,
// PeerConnected when it had been disconnected. Lock must be free.
func (t *Table) Seen(id events.PeerID, address string, now time.Time) sdk.PeerInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	p, known := t.peers[id]
	wasConnected := p.Connected
	p.ID, p.Connected, p.LastSeen = id, true, now
	if address != "" {
		p.Address = address
	}
	t.peers[id] = p
	if !known {
		t.emit(sdk.PeerDiscovered, p)
	}
	if !wasConnected {
		t.emit(sdk.PeerConnected, p)
	}
	return p
}

// Disconnected marks a known peer unreachable.
func (t *Table) Disconnected(id events.PeerID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	p, ok := t.peers[id]
	if !ok || !p.Connected {
		return
	}
	p.Connected = false
	t.peers[id] = p
	t.emit(sdk.PeerDisconnected, p)
}

// Lost forgets a peer.
func (t *Table) Lost(id events.PeerID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	p, ok := t.peers[id]
	if !ok {
		return
	}
	if p.Connected {
		p.Connected = false
		t.emit(sdk.PeerDisconnected, p)
	}
	delete(t.peers, id)
	t.emit(sdk.PeerLost, p)
}

// Forget drops a peer without an event: one that should never have been
// listed (a backend's own peer, recognised late).
func (t *Table) Forget(id events.PeerID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	if _, ok := t.peers[id]; ok {
		delete(t.peers, id)
		close(t.changed)
		t.changed = make(chan struct{})
	}
}

// Expire disconnects peers not seen for their disconnectAfter and
// forgets those not seen for their loseAfter, as timeouts gives them per
// peer. timeouts runs with the table locked, so it must not call it.
func (t *Table) Expire(now time.Time, timeouts func(events.PeerID) (disconnectAfter, loseAfter time.Duration)) {
	var lost []events.PeerID
	var quiet []events.PeerID
	t.mu.Lock()
	for id, p := range t.peers {
		disconnectAfter, loseAfter := timeouts(id)
		switch age := now.Sub(p.LastSeen); {
		case age >= loseAfter:
			lost = append(lost, id)
		case age >= disconnectAfter && p.Connected:
			quiet = append(quiet, id)
		}
	}
	t.mu.Unlock()
	for _, id := range quiet {
		t.Disconnected(id)
	}
	for _, id := range lost {
		t.Lost(id)
	}
}

// Get returns one peer.
func (t *Table) Get(id events.PeerID) (sdk.PeerInfo, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[id]
	return p, ok
}

// List returns the known peers ordered by id.
func (t *Table) List() []sdk.PeerInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]sdk.PeerInfo, 0, len(t.peers))
	for _, id := range slices.Sorted(maps.Keys(t.peers)) {
		out = append(out, t.peers[id])
	}
	return out
}

// Wait returns once peer is known, or fails with ctx's error.
func (t *Table) Wait(ctx context.Context, id events.PeerID) (sdk.PeerInfo, error) {
	for {
		t.mu.Lock()
		t.init()
		p, ok := t.peers[id]
		changed := t.changed
		t.mu.Unlock()
		if ok {
			return p, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return sdk.PeerInfo{}, events.Wrap(events.ReasonNotFound, ctx.Err(), "peer "+string(id)+" was not discovered")
		}
	}
}

// Subscribe delivers peer events until done is closed or CloseAll. A
// subscriber more than sdk.PeerEventBuffer events behind misses events.
func (t *Table) Subscribe(done <-chan struct{}) <-chan sdk.PeerEvent {
	s := &subscriber{ch: make(chan sdk.PeerEvent, sdk.PeerEventBuffer), done: done}
	t.mu.Lock()
	t.init()
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	go func() {
		<-done
		t.mu.Lock()
		defer t.mu.Unlock()
		if _, ok := t.subs[s]; ok {
			delete(t.subs, s)
			close(s.ch)
		}
	}()
	return s.ch
}

// CloseAll ends every subscription and forgets every peer.
func (t *Table) CloseAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	for s := range t.subs {
		close(s.ch)
	}
	clear(t.subs)
	clear(t.peers)
}

// emit tells subscribers and waiters. Lock must be held.
func (t *Table) emit(kind sdk.PeerEventKind, p sdk.PeerInfo) {
	for s := range t.subs {
		select {
		case s.ch <- sdk.PeerEvent{Kind: kind, Peer: p}:
		default:
		}
	}
	close(t.changed)
	t.changed = make(chan struct{})
}
