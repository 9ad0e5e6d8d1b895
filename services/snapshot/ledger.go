package snapshot

import (
	"slices"
	"strings"

	"github.com/factsync/factsync/events"
)

// Ledger is the state of snapshot coordination, folded from the SNAPSHOTS
// stream: every proposal with the approvals it gathered, which committed,
// and the highest fencing token seen per authority.
//
// A proposal carries the manifest and its creator's signature. Peers that
// hold the authority check the manifest against their own journal (same
// fingerprint and count before the cut, same documents, same content) and
// sign it; each valid signature of an allowed peer not yet counted is an
// approval. A proposal commits once its distinct approvers (the creator
// counts) reach the authority's threshold. Apply refuses everything else,
// so writers check an event before writing it, and replay skips whatever a
// buggy writer might have written anyway.
type Ledger struct {
	policy    func(events.AuthorityID) Policy
	snapshots map[string]*entry
	order     map[events.AuthorityID][]string // proposal ids, oldest first
	fence     map[events.AuthorityID]uint64
}

type entry struct {
	info     events.SnapshotInfo
	manifest *Manifest
}

// NewLedger returns an empty ledger; policy gives each authority's
// approval policy.
func NewLedger(policy func(events.AuthorityID) Policy) *Ledger {
	return &Ledger{policy: policy, snapshots: map[string]*entry{}, order: map[events.AuthorityID][]string{}, fence: map[events.AuthorityID]uint64{}}
}

// ApplyMessage decodes a SNAPSHOTS message and applies it.
func (l *Ledger) ApplyMessage(subject string, data []byte) error {
	ev, err := events.DecodeSnapshotEvent(data)
	if err != nil {
		return err
	}
	t := strings.Split(subject, ".")
	if len(t) != 4 || events.SnapshotEventSubject(ev.Kind, events.AuthorityID(t[3])) != subject {
		return events.Errorf(events.ReasonMalformed, "snapshot event %s on subject %s", ev.Kind, subject)
	}
	return l.Apply(events.AuthorityID(t[3]), ev)
}

// Apply checks one event about auth and records it.
func (l *Ledger) Apply(auth events.AuthorityID, ev events.SnapshotEvent) error {
	switch ev.Kind {
	case events.SnapshotProposed:
		return l.propose(auth, ev)
	case events.SnapshotApproved:
		e, err := l.open(auth, ev.ID)
		if err != nil {
			return err
		}
		return l.approve(e, ev.Signature)
	case events.SnapshotCommitted:
		e, err := l.open(auth, ev.ID)
		if err != nil {
			return err
		}
		if err := l.policy(auth).CheckThreshold(e.info.Manifest, e.info.Signatures); err != nil {
			return err
		}
		e.info.Committed = true
		return nil
	}
	return events.Errorf(events.ReasonMalformed, "unknown snapshot event kind %q", ev.Kind)
}

func (l *Ledger) propose(auth events.AuthorityID, ev events.SnapshotEvent) error {
	m, err := DecodeManifest(ev.Manifest)
	if err != nil {
		return err
	}
	id := ManifestID(ev.Manifest)
	switch {
	case m.Authority() != auth:
		return events.Errorf(events.ReasonMalformed, "proposal of authority %s recorded under %s", m.Authority(), auth)
	case ev.ID != id:
		return events.Errorf(events.ReasonMalformed, "proposal names id %.16s but its manifest is %.16s", ev.ID, id)
	case l.snapshots[id] != nil:
		return events.Errorf(events.ReasonConflict, "snapshot %.16s is proposed already", id)
	case ev.Signature.Peer != m.CreatorPeer():
		return events.Errorf(events.ReasonBadSignature, "proposal is signed by %s, not its creator %s", ev.Signature.Peer, m.CreatorPeer())
	case m.Fence < l.fence[auth]:
		return events.Errorf(events.ReasonConflict, "proposal under fencing token %d, but token %d of a later writer is recorded: this writer was fenced off", m.Fence, l.fence[auth])
	}
	if err := CheckSignature(ev.Manifest, ev.Signature); err != nil {
		return err
	}
	e := &entry{manifest: m, info: events.SnapshotInfo{
		ID:          id,
		Authority:   auth,
		CutSeconds:  m.Cut,
		Fingerprint: m.Summary.Hex(),
		Count:       m.Summary.Count,
		Facts:       m.Facts,
		Documents:   m.Documents,
		ContentSize: int64(m.ContentSize),
		Creator:     m.CreatorPeer(),
		CreatedAt:   m.CreatedAt,
		Fence:       m.Fence,
		Threshold:   l.policy(auth).threshold(),
		Manifest:    ev.Manifest,
	}}
	if err := l.approve(e, ev.Signature); err != nil {
		return err
	}
	l.snapshots[id] = e
	l.order[auth] = append(l.order[auth], id)
	l.fence[auth] = m.Fence
	return nil
}

// approve counts one more approver of e.
func (l *Ledger) approve(e *entry, s events.SnapshotSignature) error {
	if err := CheckSignature(e.info.Manifest, s); err != nil {
		return err
	}
	if !l.policy(e.info.Authority).allows(s.Peer) {
		return events.Errorf(events.ReasonNoRight, "peer %s is not an approver of authority %s", s.Peer, e.info.Authority)
	}
	for _, have := range e.info.Signatures {
		if have.Peer == s.Peer {
			return events.Errorf(events.ReasonConflict, "peer %s approved snapshot %.16s already", s.Peer, e.info.ID)
		}
	}
	e.info.Signatures = append(e.info.Signatures, s)
	return nil
}

// open returns the proposal id of auth, not yet committed.
func (l *Ledger) open(auth events.AuthorityID, id string) (*entry, error) {
	e := l.snapshots[id]
	switch {
	case e == nil || e.info.Authority != auth:
		return nil, events.Errorf(events.ReasonNotFound, "no snapshot %.16s of authority %s", id, auth)
	case e.info.Committed:
		return nil, events.Errorf(events.ReasonConflict, "snapshot %.16s is committed already", id)
	}
	return e, nil
}

// Ready reports whether proposal id has reached its threshold but is not
// committed yet.
func (l *Ledger) Ready(id string) bool {
	e := l.snapshots[id]
	return e != nil && !e.info.Committed && l.policy(e.info.Authority).CheckThreshold(e.info.Manifest, e.info.Signatures) == nil
}

// Get returns one snapshot.
func (l *Ledger) Get(id string) (events.SnapshotInfo, bool) {
	e := l.snapshots[id]
	if e == nil {
		return events.SnapshotInfo{}, false
	}
	return clone(e.info), true
}

// List returns auth's snapshots, newest cut first (ties: newest proposal
// first).
func (l *Ledger) List(auth events.AuthorityID, committedOnly bool) []events.SnapshotInfo {
	ids := l.order[auth]
	out := make([]events.SnapshotInfo, 0, len(ids))
	for i := len(ids) - 1; i >= 0; i-- {
		if e := l.snapshots[ids[i]]; !committedOnly || e.info.Committed {
			out = append(out, clone(e.info))
		}
	}
	slices.SortStableFunc(out, func(a, b events.SnapshotInfo) int { return int(b.CutSeconds) - int(a.CutSeconds) })
	return out
}

// Latest returns auth's committed snapshot with the latest cut.
func (l *Ledger) Latest(auth events.AuthorityID) (events.SnapshotInfo, bool) {
	list := l.List(auth, true)
	if len(list) == 0 {
		return events.SnapshotInfo{}, false
	}
	return list[0], true
}

func clone(info events.SnapshotInfo) events.SnapshotInfo {
	info.Signatures = slices.Clone(info.Signatures)
	return info
}

// shortID is the prefix of an id shown to people.
func shortID(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

// clone copies the ledger so a write can be tried before it lands.
func (l *Ledger) clone() *Ledger {
	out := NewLedger(l.policy)
	for id, e := range l.snapshots {
		c := *e
		c.info = clone(e.info)
		out.snapshots[id] = &c
	}
	for a, ids := range l.order {
		out.order[a] = slices.Clone(ids)
	}
	for a, f := range l.fence {
		out.fence[a] = f
	}
	return out
}
