package events

import (
	eventsv1 "github.com/factsync/factsync/events/v1"
)

// EncodeSnapshotEvent encodes ev as an eventsv1.SnapshotEvent, the form
// written to the SNAPSHOTS stream. Only the fields of ev.Kind travel; an
// unknown kind is refused with ReasonMalformed.
func EncodeSnapshotEvent(ev SnapshotEvent) ([]byte, error) {
	m := &eventsv1.SnapshotEvent{At: timestampOf(ev.At), Id: ev.ID}
	switch ev.Kind {
	case SnapshotProposed:
		m.Event = &eventsv1.SnapshotEvent_Proposed{Proposed: &eventsv1.SnapshotProposed{Manifest: ev.Manifest, Signature: snapshotSignatureProto(ev.Signature)}}
	case SnapshotApproved:
		m.Event = &eventsv1.SnapshotEvent_Approved{Approved: &eventsv1.SnapshotApproved{Signature: snapshotSignatureProto(ev.Signature)}}
	case SnapshotCommitted:
		m.Event = &eventsv1.SnapshotEvent_Committed{Committed: &eventsv1.SnapshotCommitted{}}
	default:
		return nil, Errorf(ReasonMalformed, "snapshot event kind %q is unknown", ev.Kind)
	}
	return encodeEvent("snapshot event", m)
}

// DecodeSnapshotEvent decodes an event of the SNAPSHOTS stream. It checks
// the shape only; the snapshot ledger checks manifests and signatures.
func DecodeSnapshotEvent(data []byte) (SnapshotEvent, error) {
	var m eventsv1.SnapshotEvent
	if err := decodeEvent("snapshot event", data, &m); err != nil {
		return SnapshotEvent{}, err
	}
	ev := SnapshotEvent{At: timeOf(m.GetAt()), ID: m.GetId()}
	switch e := m.GetEvent().(type) {
	case *eventsv1.SnapshotEvent_Proposed:
		ev.Kind = SnapshotProposed
		ev.Manifest = e.Proposed.GetManifest()
		ev.Signature = snapshotSignatureOf(e.Proposed.GetSignature())
	case *eventsv1.SnapshotEvent_Approved:
		ev.Kind = SnapshotApproved
		ev.Signature = snapshotSignatureOf(e.Approved.GetSignature())
	case *eventsv1.SnapshotEvent_Committed:
		ev.Kind = SnapshotCommitted
	default:
		return SnapshotEvent{}, Errorf(ReasonMalformed, "snapshot event has no kind this peer knows")
	}
	return ev, nil
}

// EncodeSnapshotProgress encodes p as an eventsv1.SnapshotProgress, the
// form published on SnapshotProgressSubject and to a restore's progress
// inbox.
func EncodeSnapshotProgress(p SnapshotProgress) ([]byte, error) {
	return encodeEvent("snapshot progress", &eventsv1.SnapshotProgress{
		Authority: string(p.Authority),
		Snapshot:  p.Snapshot,
		Phase:     string(p.Phase),
		Done:      p.Done,
		Total:     p.Total,
		Reason:    string(p.Reason),
		Detail:    p.Detail,
	})
}

// DecodeSnapshotProgress decodes a restore progress report; a report
// without a phase is refused with ReasonMalformed.
func DecodeSnapshotProgress(data []byte) (SnapshotProgress, error) {
	var m eventsv1.SnapshotProgress
	if err := decodeEvent("snapshot progress", data, &m); err != nil {
		return SnapshotProgress{}, err
	}
	if m.GetPhase() == "" {
		return SnapshotProgress{}, Errorf(ReasonMalformed, "snapshot progress has no phase")
	}
	return SnapshotProgress{
		Authority: AuthorityID(m.GetAuthority()),
		Snapshot:  m.GetSnapshot(),
		Phase:     SnapshotPhase(m.GetPhase()),
		Done:      m.GetDone(),
		Total:     m.GetTotal(),
		Reason:    Reason(m.GetReason()),
		Detail:    m.GetDetail(),
	}, nil
}

func snapshotSignatureProto(s SnapshotSignature) *eventsv1.SnapshotSignature {
	if s.Peer == "" && s.Key == nil && s.Sig == nil {
		return nil
	}
	return &eventsv1.SnapshotSignature{Peer: string(s.Peer), Key: s.Key, Sig: s.Sig}
}

func snapshotSignatureOf(m *eventsv1.SnapshotSignature) SnapshotSignature {
	return SnapshotSignature{Peer: PeerID(m.GetPeer()), Key: m.GetKey(), Sig: m.GetSig()}
}
