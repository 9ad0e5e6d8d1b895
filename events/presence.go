package events

import (
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
