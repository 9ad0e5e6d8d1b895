package ota

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
)

// t0 is the start of every test's fake time.
var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	testNotice   = time.Hour
	testLifetime = 365 * 24 * time.Hour
)

// keyFrom derives a fixed key from a label, so failures reproduce.
func keyFrom(label string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte(label))
	return ed25519.NewKeyFromSeed(seed[:])
}

func keys(prefix string, n int) []ed25519.PrivateKey {
	out := make([]ed25519.PrivateKey, n)
	for i := range out {
		out[i] = keyFrom(prefix + string(rune('a'+i)))
	}
	return out
}

func hexKeys(ks []ed25519.PrivateKey) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = hex.EncodeToString(k.Public().(ed25519.PublicKey))
	}
	return out
}

// fleet is a deployment's keys: 3 root keys (threshold 2), 3 approvers
// (threshold 2) and 3 peers (quorum 3).
type fleet struct {
	root, approvers, peers []ed25519.PrivateKey
}

func newFleet() fleet {
	return fleet{root: keys("root-", 3), approvers: keys("approver-", 3), peers: keys("peer-", 3)}
}

func (f fleet) rootPolicy(version uint64) events.OTARoot {
	return events.OTARoot{
		Version:   version,
		Expires:   t0.Add(testLifetime),
		Root:      events.OTARole{Keys: hexKeys(f.root), Threshold: 2},
		Approvers: events.OTARole{Keys: hexKeys(f.approvers), Threshold: 2},
		Peers:     events.OTARole{Keys: hexKeys(f.peers), Threshold: 3},
		MinNotice: testNotice,
	}
}

func mustSign(t testing.TB, r events.OTARoot, ks ...ed25519.PrivateKey) events.OTASignedRoot {
	t.Helper()
	s, err := SignRoot(r, ks...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// trusted is the fleet's version-1 root, trusted.
func (f fleet) trusted(t testing.TB) *Policy {
	t.Helper()
	p, err := TrustRoot(mustSign(t, f.rootPolicy(1), f.root[0], f.root[1]))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// artifact is a test release's bytes.
var artifact = []byte("factsync release v2.0.0 for linux/amd64\n")

// proposal is a hard fork to protocol 2 under p, proposed at t0.
func proposal(p *Policy, version string) events.OTAProposal {
	sum := sha256.Sum256(artifact)
	return events.OTAProposal{
		Package: "factsync", Version: version, Kind: events.OTAHardFork, Protocol: 2,
		Artifact:   events.OTAArtifact{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(artifact))},
		ActivateAt: t0.Add(2 * testNotice), Deadline: t0.Add(4 * testNotice),
		PolicyVersion: p.Version, PolicyDigest: p.DigestHex(),
	}
}

func proposedEvent(prop events.OTAProposal, at time.Time) events.OTAEvent {
	b := EncodeProposal(prop)
	return events.OTAEvent{Kind: events.OTAEventProposed, At: at, Proposal: ProposalID(b), ProposalBytes: b, Proposer: "proposer"}
}

func approvedEvent(key ed25519.PrivateKey, proposalBytes []byte, at time.Time) events.OTAEvent {
	a := SignApproval(key, proposalBytes)
	return events.OTAEvent{Kind: events.OTAEventApproved, At: at, Proposal: a.Proposal, Approval: &a}
}

func readinessEvent(key ed25519.PrivateKey, proposalBytes []byte, status events.OTAReadyStatus, at time.Time) events.OTAEvent {
	reason := ""
	if status == events.OTARejected {
		reason = "digest mismatch"
	}
	r := SignReadiness(key, proposalBytes, status, reason)
	return events.OTAEvent{Kind: events.OTAEventReadiness, At: at, Proposal: r.Proposal, Readiness: &r}
}

// mustApply applies evs in order and fails the test on the first refusal.
func mustApply(t testing.TB, l Ledger, evs ...events.OTAEvent) Ledger {
	t.Helper()
	for _, ev := range evs {
		var err error
		if l, err = l.Apply(ev); err != nil {
			t.Fatalf("apply %s %s: %v", ev.Kind, ev.Proposal, err)
		}
	}
	return l
}

// wantReason fails unless err carries reason.
func wantReason(t testing.TB, err error, reason events.Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want refusal with reason %s", reason)
	}
	if got := events.ReasonOf(err); got != reason {
		t.Fatalf("refused with %s (%v); want reason %s", got, err, reason)
	}
}
