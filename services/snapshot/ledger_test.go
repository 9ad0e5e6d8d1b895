package snapshot

import (
	"crypto/ed25519"
	"math/rand/v2"
	"testing"

	"github.com/factsync/factsync/events"
)

func TestLedgerCommitsAtThresholdOfDistinctValidApprovers(t *testing.T) {
	b := buildSigned(t, 11, 200, 10)
	auth := b.w.auth()
	rng := rand.New(rand.NewPCG(12, 12))
	_, third := seededKey(rng)
	policies := map[events.AuthorityID]Policy{auth: {Threshold: 3}}
	l := NewLedger(func(a events.AuthorityID) Policy { return policies[a] })
	id := ManifestID(b.manifest)

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	refused := func(err error, r events.Reason) {
		t.Helper()
		if !events.IsReason(err, r) {
			t.Fatalf("got %v, want reason %s", err, r)
		}
	}
	proposal := events.SnapshotEvent{Kind: events.SnapshotProposed, ID: id, Manifest: b.manifest, Signature: b.sigs[0]}
	refused(l.Apply(auth, events.SnapshotEvent{Kind: events.SnapshotProposed, ID: id, Manifest: b.manifest, Signature: b.sigs[1]}), events.ReasonBadSignature)
	must(l.Apply(auth, proposal))
	refused(l.Apply(auth, proposal), events.ReasonConflict)

	approve := func(s events.SnapshotSignature) error {
		return l.Apply(auth, events.SnapshotEvent{Kind: events.SnapshotApproved, ID: id, Signature: s})
	}
	commit := func() error { return l.Apply(auth, events.SnapshotEvent{Kind: events.SnapshotCommitted, ID: id}) }

	refused(approve(b.sigs[0]), events.ReasonConflict) // the creator again
	must(approve(b.sigs[1]))
	refused(approve(b.sigs[1]), events.ReasonConflict) // duplicate approver
	forged := Sign(third, b.manifest)
	forged.Sig[3] ^= 0x40
	refused(approve(forged), events.ReasonBadSignature)
	refused(commit(), events.ReasonBelowThreshold) // 2 of 3
	if l.Ready(id) {
		t.Fatal("ready below the threshold")
	}
	must(approve(Sign(third, b.manifest)))
	if !l.Ready(id) {
		t.Fatal("not ready at the threshold")
	}
	must(commit())
	refused(commit(), events.ReasonConflict)
	latest, ok := l.Latest(auth)
	if !ok || latest.ID != id || len(latest.Signatures) != 3 || !latest.Committed {
		t.Fatalf("latest committed: %+v", latest)
	}
}

func TestLedgerRefusesProposalOfAFencedOffWriter(t *testing.T) {
	b := buildSigned(t, 13, 100, 5)
	auth := b.w.auth()
	l := NewLedger(func(events.AuthorityID) Policy { return Policy{Peers: []events.PeerID{b.sigs[0].Peer, b.sigs[1].Peer}} })
	m, _ := DecodeManifest(b.manifest)
	propose := func(fence uint64, key ed25519.PrivateKey) error {
		mm := *m
		mm.Fence, mm.Creator = fence, key.Public().(ed25519.PublicKey)
		enc := mm.Marshal()
		return l.Apply(auth, events.SnapshotEvent{Kind: events.SnapshotProposed, ID: ManifestID(enc), Manifest: enc, Signature: Sign(key, enc)})
	}
	if err := propose(9, b.peers[1]); err != nil {
		t.Fatal(err)
	}
	if err := propose(5, b.peers[0]); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("proposal under an older fencing token: %v", err)
	}
	_, outsider := seededKey(rand.New(rand.NewPCG(14, 14)))
	if err := propose(10, outsider); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("proposal by a peer outside the policy: %v", err)
	}
}
