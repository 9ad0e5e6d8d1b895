package ota

import (
	"crypto/ed25519"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
)

// TestTUFRegressions replays the attacks of public TUF advisories and the
// TUF spec's attack list against the release policy. Each case builds the
// attack and must be refused with the given reason.
func TestTUFRegressions(t *testing.T) {
	f := newFleet()
	cases := []struct {
		name   string
		attack func(t *testing.T) error
		want   events.Reason
	}{
		// go-tuf GHSA-4hfp-h4cw-hj8p / python-tuf: a threshold of 0 lets
		// metadata with no valid signature verify.
		{"threshold 0 on the root role", func(t *testing.T) error {
			r := f.rootPolicy(1)
			r.Root.Threshold = 0
			_, err := TrustRoot(mustSign(t, r))
			return err
		}, events.ReasonMalformed},
		{"threshold 0 on the approvers role", func(t *testing.T) error {
			r := f.rootPolicy(1)
			r.Approvers.Threshold = 0
			_, err := TrustRoot(mustSign(t, r, f.root...))
			return err
		}, events.ReasonMalformed},
		{"threshold 0 on the peers role (quorum)", func(t *testing.T) error {
			r := f.rootPolicy(1)
			r.Peers.Threshold = 0
			_, err := TrustRoot(mustSign(t, r, f.root...))
			return err
		}, events.ReasonMalformed},
		{"threshold above the number of keys", func(t *testing.T) error {
			r := f.rootPolicy(1)
			r.Approvers.Threshold = 4
			_, err := TrustRoot(mustSign(t, r, f.root...))
			return err
		}, events.ReasonMalformed},

		// python-tuf CVE-2020-15163 / go-tuf GHSA-66x3-6cw3-v5gj: one key
		// listed under two key ids met a threshold of 2 alone.
		{"one root key's signature attached under two key ids", func(t *testing.T) error {
			s := mustSign(t, f.rootPolicy(1), f.root[0])
			alias := s.Signatures[0]
			alias.KeyID = strings.ToUpper(alias.KeyID)
			again := s.Signatures[0]
			s.Signatures = append(s.Signatures, alias, again)
			_, err := TrustRoot(s)
			return err
		}, events.ReasonBadSignature},
		{"one root key listed twice in a role", func(t *testing.T) error {
			r := f.rootPolicy(1)
			r.Root = events.OTARole{Keys: append(hexKeys(f.root[:1]), hexKeys(f.root[:1])...), Threshold: 2}
			_, err := TrustRoot(mustSign(t, r, f.root[0]))
			return err
		}, events.ReasonMalformed},
		{"one root key listed twice, in upper and lower case hex", func(t *testing.T) error {
			r := f.rootPolicy(1)
			k := hexKeys(f.root[:1])[0]
			r.Root = events.OTARole{Keys: []string{k, strings.ToUpper(k)}, Threshold: 2}
			_, err := TrustRoot(mustSign(t, r, f.root[0]))
			return err
		}, events.ReasonMalformed},
		{"one approver approving twice", func(t *testing.T) error {
			p := f.trusted(t)
			ev := proposedEvent(proposal(p, "v2.0.0"), t0)
			l := mustApply(t, NewLedger(p), ev, approvedEvent(f.approvers[0], ev.ProposalBytes, t0))
			_, err := l.Apply(approvedEvent(f.approvers[0], ev.ProposalBytes, t0.Add(time.Minute)))
			return err
		}, events.ReasonConflict},

		// TUF spec §5.3.5 and §5.4-5.6: a version below the trusted one is
		// a rollback, for every role.
		{"root rollback to an older version", func(t *testing.T) error {
			p, err := f.trusted(t).Rotate(mustSign(t, f.rootPolicy(2), f.root...), t0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Rotate(mustSign(t, f.rootPolicy(1), f.root...), t0)
			return err
		}, events.ReasonRollback},
		{"root replay of the trusted version", func(t *testing.T) error {
			_, err := f.trusted(t).Rotate(mustSign(t, f.rootPolicy(1), f.root...), t0)
			return err
		}, events.ReasonRollback},
		{"release rollback to an older package version", func(t *testing.T) error {
			p := f.trusted(t)
			l := mustApply(t, NewLedger(p), proposedEvent(proposal(p, "v2.1.0"), t0))
			_, err := l.Apply(proposedEvent(proposal(p, "v2.0.9"), t0))
			return err
		}, events.ReasonRollback},
		{"release replay of an aborted version", func(t *testing.T) error {
			p := f.trusted(t)
			ev := proposedEvent(proposal(p, "v2.0.0"), t0)
			l := mustApply(t, NewLedger(p), ev,
				events.OTAEvent{Kind: events.OTAEventAborted, At: t0, Proposal: ev.Proposal, AbortReason: events.OTAAbortManual})
			again := proposal(p, "v2.0.0")
			again.ActivateAt = again.ActivateAt.Add(time.Second)
			_, err := l.Apply(proposedEvent(again, t0))
			return err
		}, events.ReasonRollback},
		{"protocol rollback by a hard fork to the version in force", func(t *testing.T) error {
			p := f.trusted(t)
			prop := proposal(p, "v2.0.0")
			prop.Protocol = 1
			_, err := NewLedger(p).Apply(proposedEvent(prop, t0))
			return err
		}, events.ReasonRollback},
		{"protocol rollback after a hard fork activated", func(t *testing.T) error {
			p := f.trusted(t)
			l := activatedLedger(t, f, p)
			prop := proposal(p, "v3.0.0")
			prop.Protocol = 2
			prop.ActivateAt, prop.Deadline = l.Active.ActivatedAt.Add(2*testNotice), l.Active.ActivatedAt.Add(3*testNotice)
			_, err := l.Apply(proposedEvent(prop, l.Active.ActivatedAt))
			return err
		}, events.ReasonRollback},

		// TUF spec §5.3.10, freeze attack: expired metadata is refused, so
		// withholding updates keeps a peer on old metadata no longer
		// than its expiry.
		{"rotation to an expired root", func(t *testing.T) error {
			r := f.rootPolicy(2)
			r.Expires = t0.Add(time.Minute)
			_, err := f.trusted(t).Rotate(mustSign(t, r, f.root...), t0.Add(time.Hour))
			return err
		}, events.ReasonExpired},
		{"proposal under an expired root", func(t *testing.T) error {
			p := f.trusted(t)
			late := p.Expires
			prop := proposal(p, "v2.0.0")
			prop.ActivateAt, prop.Deadline = late.Add(2*testNotice), late.Add(3*testNotice)
			_, err := NewLedger(p).Apply(proposedEvent(prop, late))
			return err
		}, events.ReasonExpired},
		{"approval after the root expired", func(t *testing.T) error {
			r := f.rootPolicy(1)
			r.Expires = t0.Add(90 * time.Minute)
			p, err := TrustRoot(mustSign(t, r, f.root...))
			if err != nil {
				t.Fatal(err)
			}
			ev := proposedEvent(proposal(p, "v2.0.0"), t0)
			l := mustApply(t, NewLedger(p), ev)
			_, err = l.Apply(approvedEvent(f.approvers[0], ev.ProposalBytes, r.Expires))
			return err
		}, events.ReasonExpired},
		{"activation after the root expired", func(t *testing.T) error {
			r := f.rootPolicy(1)
			r.Expires = t0.Add(2*testNotice + time.Minute)
			p, err := TrustRoot(mustSign(t, r, f.root...))
			if err != nil {
				t.Fatal(err)
			}
			l, id := committedLedger(t, f, p)
			_, err = l.Apply(events.OTAEvent{Kind: events.OTAEventActivated, At: r.Expires, Proposal: id})
			return err
		}, events.ReasonExpired},
		{"approval after the ceremony's deadline", func(t *testing.T) error {
			p := f.trusted(t)
			prop := proposal(p, "v2.0.0")
			ev := proposedEvent(prop, t0)
			l := mustApply(t, NewLedger(p), ev)
			_, err := l.Apply(approvedEvent(f.approvers[0], ev.ProposalBytes, prop.Deadline))
			return err
		}, events.ReasonExpired},

		// TUF spec, mix-and-match attack: metadata from different
		// releases or policies combined.
		{"approval of one release presented for another", func(t *testing.T) error {
			p := f.trusted(t)
			a, b := proposedEvent(proposal(p, "v2.0.0"), t0), proposedEvent(proposal(p, "v2.0.1"), t0)
			l := mustApply(t, NewLedger(p), a, b)
			stolen := SignApproval(f.approvers[0], a.ProposalBytes)
			stolen.Proposal = b.Proposal
			_, err := l.Apply(events.OTAEvent{Kind: events.OTAEventApproved, At: t0, Proposal: b.Proposal, Approval: &stolen})
			return err
		}, events.ReasonBadSignature},
		{"readiness for one release presented for another", func(t *testing.T) error {
			p := f.trusted(t)
			a, b := proposedEvent(proposal(p, "v2.0.0"), t0), proposedEvent(proposal(p, "v2.0.1"), t0)
			l := mustApply(t, NewLedger(p), a, b,
				approvedEvent(f.approvers[0], b.ProposalBytes, t0), approvedEvent(f.approvers[1], b.ProposalBytes, t0))
			stolen := SignReadiness(f.peers[0], a.ProposalBytes, events.OTAReady, "")
			stolen.Proposal = b.Proposal
			_, err := l.Apply(events.OTAEvent{Kind: events.OTAEventReadiness, At: t0, Proposal: b.Proposal, Readiness: &stolen})
			return err
		}, events.ReasonBadSignature},
		{"proposal naming the previous root after a rotation", func(t *testing.T) error {
			p := f.trusted(t)
			old := proposal(p, "v2.0.0")
			l := mustApply(t, NewLedger(p), events.OTAEvent{Kind: events.OTAEventPolicy, At: t0, Root: ptr(mustSign(t, f.rootPolicy(2), f.root...))})
			_, err := l.Apply(proposedEvent(old, t0))
			return err
		}, events.ReasonConflict},
		{"proposal naming the trusted version but another root's digest", func(t *testing.T) error {
			p := f.trusted(t)
			other := f.rootPolicy(1)
			other.MinNotice = 0
			forged, err := ParseRoot(mustSign(t, other, f.root...))
			if err != nil {
				t.Fatal(err)
			}
			prop := proposal(p, "v2.0.0")
			prop.PolicyDigest = forged.DigestHex()
			_, err = NewLedger(p).Apply(proposedEvent(prop, t0))
			return err
		}, events.ReasonConflict},
		{"approval under the old keys after a rotation", func(t *testing.T) error {
			p := f.trusted(t)
			ev := proposedEvent(proposal(p, "v2.0.0"), t0)
			l := mustApply(t, NewLedger(p), ev,
				events.OTAEvent{Kind: events.OTAEventPolicy, At: t0, Root: ptr(mustSign(t, f.rootPolicy(2), f.root...))})
			_, err := l.Apply(approvedEvent(f.approvers[0], ev.ProposalBytes, t0))
			return err
		}, events.ReasonConflict},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { wantReason(t, tc.attack(t), tc.want) })
	}
}

// TestRotation checks that a root rotation needs a threshold of the old
// root keys and a threshold of the new ones, and the next version exactly.
func TestRotation(t *testing.T) {
	f := newFleet()
	p := f.trusted(t)
	newRoot := keys("new-root-", 3)
	next := f.rootPolicy(2)
	next.Root = events.OTARole{Keys: hexKeys(newRoot), Threshold: 2}

	cases := []struct {
		name    string
		version uint64
		signers []ed25519.PrivateKey
		want    events.Reason
	}{
		{"old keys only", 2, f.root, events.ReasonBadSignature},
		{"new keys only", 2, newRoot, events.ReasonBadSignature},
		{"one old and two new", 2, []ed25519.PrivateKey{f.root[0], newRoot[0], newRoot[1]}, events.ReasonBadSignature},
		{"skipping a version", 3, []ed25519.PrivateKey{f.root[0], f.root[1], newRoot[0], newRoot[1]}, events.ReasonMalformed},
		{"two old and two new", 2, []ed25519.PrivateKey{f.root[0], f.root[2], newRoot[1], newRoot[2]}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := next
			r.Version = tc.version
			got, err := p.Rotate(mustSign(t, r, tc.signers...), t0)
			if tc.want != "" {
				wantReason(t, err, tc.want)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Version != 2 || got.Root.Keys[0] != hex.EncodeToString(newRoot[0].Public().(ed25519.PublicKey)) {
				t.Fatalf("rotated to version %d with root keys %v", got.Version, got.Root.Keys)
			}
		})
	}
}

// TestTrustRootNeedsItsOwnThreshold checks the trust anchor itself.
func TestTrustRootNeedsItsOwnThreshold(t *testing.T) {
	f := newFleet()
	_, err := TrustRoot(mustSign(t, f.rootPolicy(1), f.root[0]))
	wantReason(t, err, events.ReasonBadSignature)
	outsider := keyFrom("outsider")
	_, err = TrustRoot(mustSign(t, f.rootPolicy(1), f.root[0], outsider))
	wantReason(t, err, events.ReasonBadSignature)
	s := mustSign(t, f.rootPolicy(1), f.root[0], f.root[1])
	s.Signed = append([]byte(nil), s.Signed...)
	s.Signed[len(s.Signed)-2] ^= 1 // tamper after signing
	if _, err := TrustRoot(s); err == nil {
		t.Fatal("accepted a root whose bytes changed after signing")
	}
}

func ptr[T any](v T) *T { return &v }
