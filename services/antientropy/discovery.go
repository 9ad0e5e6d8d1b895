package antientropy

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Discovery state lives in two key-value buckets of this peer's own
// JetStream, so every replica of the service, the operator (`nats kv ls
// peer_presence`) and the clients (through the bucket's republished
// changes on fs.discovery.<peer>) see the same peers:
//
//   - events.PresenceBucket: a key per peer heard, refreshed at each of
//     its heartbeats with a TTL of three of its intervals. The server
//     expires the key when the heartbeats stop, and that is the peer
//     lost. Heartbeats themselves stay core NATS, the only thing that
//     crosses the mesh; JetStream does not.
//   - events.StaticPeerBucket: the static peers added at run time
//     (AntiEntropyOpAddPeer), beside those of the configuration.
//
// Scores, backoff and sessions stay in each replica's memory (peers.go):
// they describe this replica's own sessions.

// presenceMarkerTTL is how long the server keeps the marker of an expired
// presence key. Watchers that are running see it at once; it only needs
// to outlive a watcher's reconnect.
const presenceMarkerTTL = time.Minute

// maxAddedPeers bounds the static peers added at run time.
const maxAddedPeers = 256

// PresenceBucketConfig is the presence bucket: one value per key,
// per-key TTLs, and every change republished to fs.discovery.<peer> for
// clients, which have no JetStream API. On file, though its content is
// soft: a server restarted under running services (an external NATS)
// would lose a bucket in memory, and the services' heartbeats and
// watches with it, until they restart too.
func PresenceBucketConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         events.PresenceBucket,
		Description:    "peers this peer hears on the mesh; a key expires three heartbeat intervals after the peer's last",
		History:        1,
		Storage:        jetstream.FileStorage,
		LimitMarkerTTL: presenceMarkerTTL,
		RePublish: &jetstream.RePublish{
			Source:      kvSubject(events.PresenceBucket, "*"),
			Destination: events.DiscoveryPrefix + ".{{wildcard(1)}}",
		},
	}
}

// StaticPeerBucketConfig is the bucket of added static peers, on file:
// they must survive a restart.
func StaticPeerBucketConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      events.StaticPeerBucket,
		Description: "static peers added at run time (factsync peers add)",
		History:     1,
		Storage:     jetstream.FileStorage,
	}
}

// kvSubject is the subject a bucket stores key under.
func kvSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

// open provisions the discovery buckets and follows them until ctx ends.
func (t *peerTable) open(ctx context.Context) error {
	// As many replicas as JOURNAL: on a JetStream cluster the discovery
	// state outlives a node, as the facts do.
	presence, static := PresenceBucketConfig(), StaticPeerBucketConfig()
	if t.s.journal != nil {
		presence.Replicas = t.s.journal.CachedInfo().Config.Replicas
		static.Replicas = presence.Replicas
	}
	kvs, err := bus.ProvisionKV(ctx, t.env.JS, presence, static)
	if err != nil {
		return err
	}
	t.presence, t.static = kvs[0], kvs[1]
	for _, follow := range []struct {
		kv     jetstream.KeyValue
		change func(events.PeerID, jetstream.KeyValueEntry)
	}{{t.presence, t.presenceChanged}, {t.static, t.staticChanged}} {
		w, err := follow.kv.WatchAll(ctx)
		if err != nil {
			return events.Wrap(events.ReasonUnavailable, err, "watch bucket "+follow.kv.Bucket())
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer func() { _ = w.Stop() }()
			for {
				select {
				case <-ctx.Done():
					return
				case e, ok := <-w.Updates():
					if !ok {
						return
					}
					if e == nil { // the initial values are in
						continue
					}
					if p := events.PeerID(e.Key()); p.Validate() == nil && p != t.env.Peer {
						follow.change(p, e)
					}
				}
			}
		}()
	}
	return nil
}

// heard records a heartbeat in the presence bucket, with a TTL of three
// of the sender's intervals. The bucket's watch (presenceChanged) then
// marks the peer present.
func (t *peerTable) heard(ctx context.Context) nats.MsgHandler {
	return func(m *nats.Msg) {
		p, err := events.DecodePresence(m.Data)
		if err != nil || p.Peer == t.env.Peer || m.Subject != events.PresenceSubject(p.Peer) {
			return
		}
		every := events.PresenceInterval(p, t.s.cfg.PresenceInterval)
		rec, err := json.Marshal(events.PresenceRecord{Peer: p.Peer, IntervalMillis: every.Milliseconds(), HeardAt: t.env.Clock.Now()})
		if err != nil {
			return
		}
		// KeyValue.Put takes no TTL; a KV put is a publish to the key's
		// subject, so publish with one. Without waiting for the ack: a
		// handler that waits falls behind on a busy server, heartbeats
		// queue up, keys expire while their peers still beat, and those
		// peers flap between lost and present (seen under -race, with
		// sessions skipped while a peer counts as lost). A record lost
		// on the way is renewed by the next heartbeat.
		msg := nats.NewMsg(kvSubject(events.PresenceBucket, string(p.Peer)))
		msg.Header.Set(jetstream.MsgTTLHeader, events.PresenceTTL(every).String())
		msg.Data = rec
		if err := t.env.Conn.PublishMsg(msg); err != nil && ctx.Err() == nil {
			t.s.log.Warn("antientropy: cannot record a heartbeat", "peer", p.Peer, "err", err)
		}
	}
}

// presenceChanged follows the presence bucket: a put is a heartbeat
// heard (a peer newly present is synced at once), a delete or the
// server's expiry marker is the peer lost.
func (t *peerTable) presenceChanged(p events.PeerID, e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		t.mu.Lock()
		defer t.mu.Unlock()
		if ps := t.peers[p]; ps != nil && ps.Present {
			ps.Present = false
			t.s.log.Info("antientropy: peer lost", "peer", p)
		}
		return
	}
	var rec events.PresenceRecord
	if json.Unmarshal(e.Value(), &rec) != nil || rec.Peer != p {
		return
	}
	t.mu.Lock()
	ps := t.peer(p)
	connected := !ps.Present
	ps.Present, ps.LastSeen = true, rec.HeardAt
	t.mu.Unlock()
	if connected {
		t.s.log.Info("antientropy: peer present", "peer", p)
		t.kick(p)
	}
}

// staticChanged follows the bucket of added static peers; a peer added
// is synced at once.
func (t *peerTable) staticChanged(p events.PeerID, e jetstream.KeyValueEntry) {
	if e.Operation() == jetstream.KeyValuePut {
		t.markAdded(p)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if ps := t.peers[p]; ps != nil {
		ps.Added, ps.Static = false, ps.configured
	}
}

// markAdded makes p an added static peer, and syncs with it when it was
// not one.
func (t *peerTable) markAdded(p events.PeerID) {
	t.mu.Lock()
	ps := t.peer(p)
	was := ps.Added
	ps.Added, ps.Static = true, true
	t.mu.Unlock()
	if !was {
		t.s.log.Info("antientropy: static peer added", "peer", p)
		t.kick(p)
	}
}

// peer returns p's state, creating it. Lock must be held.
func (t *peerTable) peer(p events.PeerID) *peerState {
	ps := t.peers[p]
	if ps == nil {
		ps = &peerState{PeerStatus: PeerStatus{Peer: p, Score: 0.5}}
		t.peers[p] = ps
	}
	return ps
}

// addPeer answers AntiEntropyOpAddPeer: it adds a peer that is present,
// or that answers on the mesh now, as a static peer, and syncs with it.
func (t *peerTable) addPeer(ctx context.Context, device string, body []byte) ([]byte, error) {
	var req events.AddPeerRequest
	if err := decodeJSON(body, &req); err != nil {
		return nil, err
	}
	if err := req.Peer.Validate(); err != nil {
		return nil, err
	}
	if req.Peer == t.env.Peer {
		return nil, events.Errorf(events.ReasonMalformed, "peer %s is this peer itself", req.Peer)
	}
	t.mu.Lock()
	known := t.peers[req.Peer]
	present, added := known != nil && known.Present, known != nil && known.Added
	n := 0
	for _, ps := range t.peers {
		if ps.Added {
			n++
		}
	}
	t.mu.Unlock()
	if !added && n >= maxAddedPeers {
		return nil, events.Errorf(events.ReasonTooLarge, "this peer keeps at most %d added peers; remove one first (nats kv del %s <peer>)", maxAddedPeers, events.StaticPeerBucket)
	}
	if !present {
		if err := t.probe(ctx, req.Peer); err != nil {
			return nil, err
		}
	}
	rec, err := json.Marshal(events.StaticPeer{Peer: req.Peer, AddedAt: t.env.Clock.Now(), AddedBy: device})
	if err != nil {
		return nil, events.Wrap(events.ReasonInternal, err, "encode the static peer")
	}
	if _, err := t.static.Put(ctx, string(req.Peer), rec); err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "record the static peer in "+events.StaticPeerBucket)
	}
	// At once rather than when the bucket's watch delivers the put, so
	// the reply shows it.
	t.markAdded(req.Peer)
	t.mu.Lock()
	st := t.peers[req.Peer].PeerStatus
	t.mu.Unlock()
	return json.Marshal(st)
}

// probe tells whether any peer p answers on the mesh. Any reply will do,
// even a refusal from p's guard (the probe carries no token); no
// responders means nothing on the mesh speaks for p.
func (t *peerTable) probe(ctx context.Context, p events.PeerID) error {
	pctx, cancel := context.WithTimeout(ctx, t.s.cfg.RequestTimeout)
	defer cancel()
	_, err := t.env.Conn.RequestWithContext(pctx, events.PeerSubject(p, Name, events.AntiEntropyOpStatus), nil)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return events.Errorf(events.ReasonNotFound, "no peer %s answers on the mesh: the id is no peer's, or that peer is offline now (list a peer that is offline in DATA/peers.txt)", p)
	case err != nil:
		return events.Wrap(events.ReasonUnavailable, err, "reach peer "+string(p))
	}
	return nil
}
