package ota

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/factsync/factsync/events"
)

// Every signature of the protocol covers a transcript that starts with one
// of these domains, so a signature made for one purpose (a root, an
// approval, a readiness report) can never be replayed as another.
const (
	domainRoot      = "factsync/ota/root/v1\x00"
	domainProposal  = "factsync/ota/proposal/v1\x00"
	domainApproval  = "factsync/ota/approval/v1\x00"
	domainReadiness = "factsync/ota/readiness/v1\x00"
)

// rootType marks the signed bytes of a root policy, as TUF's "_type" does.
const rootType = "factsync-ota-root"

// transcript is domain followed by each field with its length as a uvarint
// before it, so no two lists of fields share a transcript.
func transcript(domain string, fields ...[]byte) []byte {
	out := []byte(domain)
	for _, f := range fields {
		out = binary.AppendUvarint(out, uint64(len(f)))
		out = append(out, f...)
	}
	return out
}

// signTranscript signs a transcript with key and names the key by its id.
func signTranscript(key ed25519.PrivateKey, msg []byte) events.OTASignature {
	return events.OTASignature{KeyID: events.KeyID(key.Public().(ed25519.PublicKey)), Sig: ed25519.Sign(key, msg)}
}

// role is a decoded OTARole: keys by their derived id.
type role struct {
	name      string
	keys      map[string]ed25519.PublicKey
	threshold int
}

// decodeRole checks a role as TUF advisories taught: a threshold of at
// least 1 (a threshold of 0 lets unsigned metadata through), no more than
// the keys listed, and no key listed twice (else one signer could count
// as two).
func decodeRole(name string, r events.OTARole) (role, error) {
	if r.Threshold < 1 {
		return role{}, events.Errorf(events.ReasonMalformed, "the %s role has threshold %d; a threshold must be at least 1", name, r.Threshold)
	}
	if r.Threshold > len(r.Keys) {
		return role{}, events.Errorf(events.ReasonMalformed, "the %s role has threshold %d but only %d keys", name, r.Threshold, len(r.Keys))
	}
	out := role{name: name, keys: make(map[string]ed25519.PublicKey, len(r.Keys)), threshold: r.Threshold}
	for _, k := range r.Keys {
		pub, err := hex.DecodeString(k)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return role{}, events.Errorf(events.ReasonMalformed, "the %s role lists %q, which is not a hex Ed25519 public key", name, k)
		}
		id := events.KeyID(pub)
		if _, dup := out.keys[id]; dup {
			return role{}, events.Errorf(events.ReasonMalformed, "the %s role lists key %s twice", name, id)
		}
		out.keys[id] = pub
	}
	return out, nil
}

// count returns how many distinct keys of the role made a valid signature
// over msg. A key counts once however many signatures name it, under
// whatever key id: keys are told apart by their bytes, not their ids.
func (r role) count(msg []byte, sigs []events.OTASignature) int {
	signers := make(map[string]bool)
	for _, s := range sigs {
		pub, ok := r.keys[s.KeyID]
		if !ok || signers[string(pub)] {
			continue
		}
		if ed25519.Verify(pub, msg, s.Sig) {
			signers[string(pub)] = true
		}
	}
	return len(signers)
}

// verifyThreshold returns ReasonBadSignature unless a threshold of the
// role signed msg.
func (r role) verifyThreshold(what string, msg []byte, sigs []events.OTASignature) error {
	if n := r.count(msg, sigs); n < r.threshold {
		return events.Errorf(events.ReasonBadSignature, "%s has valid signatures from %d distinct %s keys; it needs %d", what, n, r.name, r.threshold)
	}
	return nil
}

// verifyOne checks one signature by a key of the role and returns the key
// id it counts under.
func (r role) verifyOne(what string, msg []byte, sig events.OTASignature) error {
	pub, ok := r.keys[sig.KeyID]
	if !ok {
		return events.Errorf(events.ReasonBadSignature, "%s is signed by key %q, which is not a key of the %s role", what, sig.KeyID, r.name)
	}
	if !ed25519.Verify(pub, msg, sig.Sig) {
		return events.Errorf(events.ReasonBadSignature, "%s: the signature by %s does not verify", what, sig.KeyID)
	}
	return nil
}

// Policy is a root policy whose shape has been checked: its roles decode
// and their thresholds are sound. Whether it is trusted depends on how it
// was obtained: TrustRoot and Rotate check its signatures.
type Policy struct {
	events.OTARoot
	// Signed is the policy as its signers signed it.
	Signed events.OTASignedRoot
	// Digest is the SHA-256 of Signed.Signed; proposals name it.
	Digest [sha256.Size]byte

	root, approvers, peers role
}

// DigestHex is Digest in lowercase hex, as proposals carry it.
func (p *Policy) DigestHex() string { return hex.EncodeToString(p.Digest[:]) }

// ParseRoot decodes a signed root policy and checks its shape, but not its
// signatures or expiry.
func ParseRoot(signed events.OTASignedRoot) (*Policy, error) {
	var r events.OTARoot
	dec := json.NewDecoder(bytes.NewReader(signed.Signed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "root policy does not decode")
	}
	if r.Type != rootType {
		return nil, events.Errorf(events.ReasonMalformed, "root policy has type %q, want %q", r.Type, rootType)
	}
	if r.Version < 1 {
		return nil, events.Errorf(events.ReasonMalformed, "root policy version must be at least 1")
	}
	if r.Expires.IsZero() {
		return nil, events.Errorf(events.ReasonMalformed, "root policy version %d has no expiry", r.Version)
	}
	if r.MinNotice < 0 {
		return nil, events.Errorf(events.ReasonMalformed, "root policy version %d has a negative minimum notice", r.Version)
	}
	p := &Policy{OTARoot: r, Signed: signed, Digest: sha256.Sum256(signed.Signed)}
	var err error
	if p.root, err = decodeRole("root", r.Root); err != nil {
		return nil, err
	}
	if p.approvers, err = decodeRole("approvers", r.Approvers); err != nil {
		return nil, err
	}
	if p.peers, err = decodeRole("peers", r.Peers); err != nil {
		return nil, err
	}
	return p, nil
}

// SignRoot encodes root and signs it with each of keys. Use it to make the
// first root and each rotation (signed by old and new root keys).
func SignRoot(root events.OTARoot, keys ...ed25519.PrivateKey) (events.OTASignedRoot, error) {
	root.Type = rootType
	signed, err := json.Marshal(root)
	if err != nil {
		return events.OTASignedRoot{}, err
	}
	out := events.OTASignedRoot{Signed: signed}
	for _, k := range keys {
		out.Signatures = append(out.Signatures, signTranscript(k, transcript(domainRoot, signed)))
	}
	return out, nil
}

// TrustRoot accepts the first root policy of a deployment, the trust anchor
// its config names: a threshold of its own root keys must have signed it.
// It does not check expiry, so that a peer whose anchor has expired can
// still start and follow rotations to a fresh root; everything the policy
// authorises is refused while it is expired (see CheckFresh).
func TrustRoot(signed events.OTASignedRoot) (*Policy, error) {
	p, err := ParseRoot(signed)
	if err != nil {
		return nil, err
	}
	if err := p.root.verifyThreshold(p.what(), transcript(domainRoot, signed.Signed), signed.Signatures); err != nil {
		return nil, err
	}
	return p, nil
}

// Rotate verifies next as the successor of the trusted policy p, as TUF
// updates its root: next must be version p.Version+1 (no rollback, no
// skipped version), signed by a threshold of p's root keys (the old keys
// consent) and a threshold of its own root keys (the new keys accept), and
// not expired at now (no freeze).
func (p *Policy) Rotate(next events.OTASignedRoot, now time.Time) (*Policy, error) {
	n, err := ParseRoot(next)
	if err != nil {
		return nil, err
	}
	if n.Version <= p.Version {
		return nil, events.Errorf(events.ReasonRollback, "root policy version %d is not newer than the trusted version %d", n.Version, p.Version)
	}
	if n.Version != p.Version+1 {
		return nil, events.Errorf(events.ReasonMalformed, "root policy version %d skips versions: the next after %d is %d", n.Version, p.Version, p.Version+1)
	}
	msg := transcript(domainRoot, next.Signed)
	if err := p.root.verifyThreshold(n.what()+" (by the old root keys)", msg, next.Signatures); err != nil {
		return nil, err
	}
	if err := n.root.verifyThreshold(n.what()+" (by its own root keys)", msg, next.Signatures); err != nil {
		return nil, err
	}
	if err := n.CheckFresh(now); err != nil {
		return nil, err
	}
	return n, nil
}

// CheckFresh refuses, with ReasonExpired, a policy that has expired at now.
// Nothing an expired policy authorises is accepted: an attacker who holds
// back newer metadata (a freeze attack) gains at most until the expiry.
func (p *Policy) CheckFresh(now time.Time) error {
	if !now.Before(p.Expires) {
		return events.Errorf(events.ReasonExpired, "%s expired at %s", p.what(), p.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

// Threshold is how many approvals a release needs.
func (p *Policy) Threshold() int { return p.approvers.threshold }

// Quorum is how many peers must be ready before a release activates.
func (p *Policy) Quorum() int { return p.peers.threshold }

func (p *Policy) what() string { return fmt.Sprintf("root policy version %d", p.Version) }
