package events

import (
	"time"

	eventsv1 "github.com/factsync/factsync/events/v1"
)

// Presence is the heartbeat a peer publishes on PresenceSubject(Peer),
// core NATS across the mesh, as an eventsv1.Presence.
type Presence struct {
	Peer PeerID `json:"peer"`
	// IntervalMillis is the sender's heartbeat interval, so receivers
	// expire it on its own schedule.
	IntervalMillis int64 `json:"interval_ms"`
}

// EncodePresence encodes p as an eventsv1.Presence.
func EncodePresence(p Presence) ([]byte, error) {
	return encodeEvent("presence", &eventsv1.Presence{Peer: string(p.Peer), IntervalMillis: p.IntervalMillis})
}

// DecodePresence decodes a heartbeat; one whose peer is not a PeerID is
// refused with ReasonMalformed.
func DecodePresence(data []byte) (Presence, error) {
	var m eventsv1.Presence
	if err := decodeEvent("presence", data, &m); err != nil {
		return Presence{}, err
	}
	p := Presence{Peer: PeerID(m.GetPeer()), IntervalMillis: m.GetIntervalMillis()}
	if err := p.Peer.Validate(); err != nil {
		return Presence{}, err
	}
	return p, nil
}

// PresenceBucket is the anti-entropy service's key-value bucket of the
// peers this peer hears: one key per peer (its PeerID), holding a
// PresenceRecord (JSON), written at every heartbeat with a TTL of
// PresenceTTL(the sender's interval). The bucket is local: heartbeats
// cross the mesh on core NATS, and each peer records what it hears. A
// key that expires is a peer lost; the server leaves a marker (header
// Nats-Marker-Reason: MaxAge) that watchers see as a purge.
const PresenceBucket = "peer_presence"

// StaticPeerBucket holds the static peers added while a peer runs
// (AntiEntropyOpAddPeer), one key per PeerID with a StaticPeer (JSON).
// The peers in the peer's configuration (DATA/peers.txt) are static too,
// but are not written here.
const StaticPeerBucket = "peer_static"

// PresenceRecord is what a peer stores in PresenceBucket about a peer it
// heard.
type PresenceRecord struct {
	Peer PeerID `json:"peer"`
	// IntervalMillis is the heard peer's heartbeat interval.
	IntervalMillis int64 `json:"interval_ms"`
	// HeardAt is when the heartbeat was heard, on the recording
	// service's clock.
	HeardAt time.Time `json:"heard_at"`
}

// StaticPeer is what StaticPeerBucket holds about an added peer.
type StaticPeer struct {
	Peer PeerID `json:"peer"`
	// AddedAt is when it was added, on the adding service's clock.
	AddedAt time.Time `json:"added_at"`
	// AddedBy is the device whose request added it.
	AddedBy string `json:"added_by,omitempty"`
}

// PresenceInterval is the heartbeat interval p announces, or fallback
// when it announces none or an absurd one (over an hour).
func PresenceInterval(p Presence, fallback time.Duration) time.Duration {
	every := time.Duration(p.IntervalMillis) * time.Millisecond
	if every <= 0 || every > time.Hour {
		return fallback
	}
	return every
}

// PresenceTTL is how long a peer that heartbeats every interval stays in
// PresenceBucket after its last heartbeat: three intervals, so one or two
// lost heartbeats do not lose it, rounded up to whole seconds (the
// server's TTLs count seconds, at least one).
func PresenceTTL(interval time.Duration) time.Duration {
	ttl := 3 * interval
	return max(time.Second, (ttl+time.Second-1)/time.Second*time.Second)
}
