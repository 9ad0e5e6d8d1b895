package snapshot

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
)

// Manifest is what every signature of a snapshot covers: the content's
// hash, the cut and what the cut contains, who made it and under which
// fencing token. Its encoding is fixed-size and canonical, so the manifest
// bytes, not a re-encoding, are what is signed and named.
type Manifest struct {
	AuthorityKey ed25519.PublicKey
	Cut          uint32
	// Summary is the fingerprint, count and id sum of every fact before
	// the cut, whether or not the snapshot holds it. The sum is what a
	// restored peer counts back in for the facts the snapshot left out.
	Summary SetSummary
	// Facts and Documents count what the content holds.
	Facts     uint64
	Documents uint64
	// StateDigest is fold.State.Digest of the documents at the cut.
	StateDigest [32]byte
	ContentHash [32]byte
	ContentSize uint64
	Creator     ed25519.PublicKey
	CreatedAt   time.Time // millisecond precision
	// Fence is the creator's fencing token (the fence key's revision).
	Fence uint64
}

// manifestMagic names the encoding. Version 2 added the id sum; version 1
// manifests are refused, since a peer restored from one could never again
// compute a fingerprint before a later cut.
const manifestMagic = "fssnapm2"

// manifestSize is the length of every manifest encoding.
const manifestSize = len(manifestMagic) + ed25519.PublicKeySize + 4 + negentropy.FingerprintSize + 8 + negentropy.IDSize + 8 + 8 + 32 + 32 + 8 + ed25519.PublicKeySize + 8 + 8

// Authority is the manifest's authority.
func (m *Manifest) Authority() events.AuthorityID { return events.AuthorityIDOf(m.AuthorityKey) }

// CreatorPeer is the creator's PeerID.
func (m *Manifest) CreatorPeer() events.PeerID { return events.PeerIDOf(m.Creator) }

// Marshal returns the canonical encoding: the magic, then every field in
// declaration order, integers big-endian.
func (m *Manifest) Marshal() []byte {
	b := make([]byte, 0, manifestSize)
	b = append(b, manifestMagic...)
	b = append(b, m.AuthorityKey...)
	b = binary.BigEndian.AppendUint32(b, m.Cut)
	b = append(b, m.Summary.Fingerprint[:]...)
	b = binary.BigEndian.AppendUint64(b, m.Summary.Count)
	for _, w := range m.Summary.Sum {
		b = binary.LittleEndian.AppendUint64(b, w) // as the fingerprint hashes it
	}
	b = binary.BigEndian.AppendUint64(b, m.Facts)
	b = binary.BigEndian.AppendUint64(b, m.Documents)
	b = append(b, m.StateDigest[:]...)
	b = append(b, m.ContentHash[:]...)
	b = binary.BigEndian.AppendUint64(b, m.ContentSize)
	b = append(b, m.Creator...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.CreatedAt.UnixMilli()))
	b = binary.BigEndian.AppendUint64(b, m.Fence)
	return b
}

// DecodeManifest parses Marshal's encoding.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) != manifestSize || string(b[:len(manifestMagic)]) != manifestMagic {
		return nil, events.Errorf(events.ReasonMalformed, "snapshot manifest is %d bytes without magic %q; want %d bytes", len(b), manifestMagic, manifestSize)
	}
	r := b[len(manifestMagic):]
	next := func(n int) []byte { out := r[:n:n]; r = r[n:]; return out }
	u64 := func() uint64 { return binary.BigEndian.Uint64(next(8)) }
	m := &Manifest{AuthorityKey: ed25519.PublicKey(next(ed25519.PublicKeySize)), Cut: binary.BigEndian.Uint32(next(4))}
	copy(m.Summary.Fingerprint[:], next(negentropy.FingerprintSize))
	m.Summary.Count = u64()
	for i := range m.Summary.Sum {
		m.Summary.Sum[i] = binary.LittleEndian.Uint64(next(8))
	}
	if m.Summary.Sum.Fingerprint(m.Summary.Count) != m.Summary.Fingerprint {
		return nil, events.Errorf(events.ReasonMalformed, "snapshot manifest's fingerprint is not that of its id sum and count")
	}
	m.Facts, m.Documents = u64(), u64()
	copy(m.StateDigest[:], next(32))
	copy(m.ContentHash[:], next(32))
	m.ContentSize = u64()
	m.Creator = ed25519.PublicKey(next(ed25519.PublicKeySize))
	m.CreatedAt = time.UnixMilli(int64(u64())).UTC()
	m.Fence = u64()
	return m, nil
}

// ManifestID names a snapshot: the hex SHA-256 of its manifest encoding.
func ManifestID(manifest []byte) string {
	sum := sha256.Sum256(manifest)
	return hex.EncodeToString(sum[:])
}

// Sign signs a manifest encoding with a peer key.
func Sign(key ed25519.PrivateKey, manifest []byte) events.SnapshotSignature {
	pub := key.Public().(ed25519.PublicKey)
	return events.SnapshotSignature{Peer: events.PeerIDOf(pub), Key: pub, Sig: ed25519.Sign(key, signedManifest(manifest))}
}

// CheckSignature verifies one signature over a manifest encoding, and that
// its peer id is its key's.
func CheckSignature(manifest []byte, s events.SnapshotSignature) error {
	if len(s.Key) != ed25519.PublicKeySize || events.PeerIDOf(s.Key) != s.Peer {
		return events.Errorf(events.ReasonBadSignature, "signature names peer %s but carries another key", s.Peer)
	}
	if !ed25519.Verify(s.Key, signedManifest(manifest), s.Sig) {
		return events.Errorf(events.ReasonBadSignature, "signature of peer %s does not verify over the manifest", s.Peer)
	}
	return nil
}

func signedManifest(manifest []byte) []byte {
	return append([]byte(events.DomainSnapshotManifest), manifest...)
}

// Policy is who may approve an authority's snapshots, and how many must.
type Policy struct {
	// Threshold is how many distinct peers must sign (the creator counts);
	// default DefaultThreshold.
	Threshold int
	// Peers, when not empty, are the only peers whose signatures count.
	Peers []events.PeerID
}

// DefaultThreshold is 2 signatures, "2 of 3" with three peers.
const DefaultThreshold = 2

func (p Policy) threshold() int {
	if p.Threshold <= 0 {
		return DefaultThreshold
	}
	return p.Threshold
}

func (p Policy) allows(peer events.PeerID) bool {
	if len(p.Peers) == 0 {
		return true
	}
	for _, q := range p.Peers {
		if q == peer {
			return true
		}
	}
	return false
}

// Approvers returns the distinct peers whose signatures over manifest are
// valid and allowed by p, and the reasons the others do not count.
func (p Policy) Approvers(manifest []byte, sigs []events.SnapshotSignature) ([]events.PeerID, []string) {
	seen := map[events.PeerID]bool{}
	var ok []events.PeerID
	var refused []string
	for _, s := range sigs {
		switch err := CheckSignature(manifest, s); {
		case err != nil:
			refused = append(refused, err.Error())
		case !p.allows(s.Peer):
			refused = append(refused, "peer "+string(s.Peer)+" is not an approver of this authority")
		case seen[s.Peer]:
			refused = append(refused, "peer "+string(s.Peer)+" signed more than once")
		default:
			seen[s.Peer] = true
			ok = append(ok, s.Peer)
		}
	}
	return ok, refused
}

// CheckThreshold returns nil when at least the threshold of distinct,
// allowed peers signed manifest validly, else ReasonBelowThreshold.
func (p Policy) CheckThreshold(manifest []byte, sigs []events.SnapshotSignature) error {
	ok, refused := p.Approvers(manifest, sigs)
	if len(ok) < p.threshold() {
		return events.Errorf(events.ReasonBelowThreshold, "snapshot %s has %d valid approvals of %d needed (not counted: %v)",
			ManifestID(manifest)[:16], len(ok), p.threshold(), refused)
	}
	return nil
}
