package snapshot

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"math/rand/v2"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/fold"
)

// built is a snapshot with two peers' signatures.
type built struct {
	w        *writer
	all      []*events.Fact
	cut      uint32
	manifest []byte
	content  []byte
	sigs     []events.SnapshotSignature
	peers    []ed25519.PrivateKey
}

func buildSigned(t testing.TB, seed uint64, n, docs int) *built {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	w := newWriter(t, rng)
	all := w.history(t, rng, n, docs)
	cut := all[n/2].HLC.Seconds()
	b := NewBuilder(w.authPub, cut)
	b.AddToken(w.token)
	for _, f := range all {
		if err := b.AddFact(f); err != nil {
			t.Fatal(err)
		}
	}
	out, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	_, p1 := seededKey(rng)
	_, p2 := seededKey(rng)
	manifest := out.Stamp(p1.Public().(ed25519.PublicKey), testNow, 7)
	return &built{w: w, all: all, cut: cut, manifest: manifest, content: out.Content,
		sigs: []events.SnapshotSignature{Sign(p1, manifest), Sign(p2, manifest)}, peers: []ed25519.PrivateKey{p1, p2}}
}

func TestSnapshotHoldsOnlyNeededFactsAndRebuildsTheCut(t *testing.T) {
	b := buildSigned(t, 1, 3000, 60)
	v, err := Verify(b.w.auth(), b.manifest, b.sigs, b.content, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	full := fold.New()
	var before uint64
	for _, f := range b.all {
		if BeforeCut(f, b.cut) {
			full.Apply(f)
			before++
		}
	}
	if v.State.Digest() != full.Digest() {
		t.Fatal("the snapshot's facts do not fold to the state of every fact before the cut")
	}
	if v.Manifest.Summary.Count != before {
		t.Fatalf("manifest counts %d facts before the cut, history has %d", v.Manifest.Summary.Count, before)
	}
	if len(v.Content.Facts) == 0 || uint64(len(v.Content.Facts)) >= before/4 {
		t.Fatalf("snapshot holds %d of %d facts; superseded facts should be dropped", len(v.Content.Facts), before)
	}
	deleted := 0
	for _, coll := range full.Collections() {
		for d := range full.Documents(coll) {
			if d.Deleted {
				deleted++
			}
		}
	}
	if deleted == 0 {
		t.Fatal("fixture has no deleted document; the tombstone path is untested")
	}
}

func TestOneChangedByteOfContentIsRefused(t *testing.T) {
	b := buildSigned(t, 2, 400, 20)
	rng := rand.New(rand.NewPCG(9, 9))
	for range 50 {
		c := bytes.Clone(b.content)
		i := rng.IntN(len(c))
		c[i] ^= byte(1 + rng.IntN(255))
		_, err := Verify(b.w.auth(), b.manifest, b.sigs, c, Policy{})
		if !events.IsReason(err, events.ReasonTampered) {
			t.Fatalf("byte %d changed: got %v, want reason %s", i, err, events.ReasonTampered)
		}
	}
}

func TestForgedManifestIsRefused(t *testing.T) {
	b := buildSigned(t, 3, 400, 20)
	m, err := DecodeManifest(b.manifest)
	if err != nil {
		t.Fatal(err)
	}
	auth := b.w.auth()

	// A manifest changed after signing: every signature fails.
	forged := *m
	forged.Summary = summaryOfSum(m.Summary.Sum, m.Summary.Count+1)
	fb := forged.Marshal()
	if _, err := Verify(auth, fb, b.sigs, b.content, Policy{}); !events.IsReason(err, events.ReasonBelowThreshold) {
		t.Fatalf("forged manifest with the old signatures: got %v", err)
	}
	// Re-signed by one peer twice: a duplicate approver counts once.
	dup := []events.SnapshotSignature{Sign(b.peers[0], fb), Sign(b.peers[0], fb)}
	if _, err := Verify(auth, fb, dup, b.content, Policy{}); !events.IsReason(err, events.ReasonBelowThreshold) {
		t.Fatalf("one approver signing twice: got %v", err)
	}
	// A signature whose bytes were flipped does not count.
	bad := append([]events.SnapshotSignature(nil), b.sigs...)
	bad[1].Sig = bytes.Clone(bad[1].Sig)
	bad[1].Sig[0] ^= 1
	if _, err := Verify(auth, b.manifest, bad, b.content, Policy{}); !events.IsReason(err, events.ReasonBelowThreshold) {
		t.Fatalf("one bad signature of two: got %v", err)
	}
	// A peer the authority does not list does not count.
	only := Policy{Peers: []events.PeerID{b.sigs[0].Peer}}
	if _, err := Verify(auth, b.manifest, b.sigs, b.content, only); !events.IsReason(err, events.ReasonBelowThreshold) {
		t.Fatalf("approver outside the policy: got %v", err)
	}
	// Threshold 3 of these 2 peers fails; threshold 1 passes.
	if _, err := Verify(auth, b.manifest, b.sigs, b.content, Policy{Threshold: 3}); !events.IsReason(err, events.ReasonBelowThreshold) {
		t.Fatalf("threshold 3 with 2 signatures: got %v", err)
	}
	if _, err := Verify(auth, b.manifest, b.sigs[:1], b.content, Policy{Threshold: 1}); err != nil {
		t.Fatalf("threshold 1: %v", err)
	}
	// Another authority's snapshot is refused even when well signed.
	other := newWriter(t, rand.New(rand.NewPCG(4, 4)))
	if _, err := Verify(other.auth(), b.manifest, b.sigs, b.content, Policy{}); !events.IsReason(err, events.ReasonTampered) {
		t.Fatalf("snapshot of another authority: got %v", err)
	}
}

// Signers that lie (a threshold of them sign content whose stated
// documents are not the fold of its facts) are caught by the fold check.
func TestStatedDocumentsMustBeTheFoldOfTheFacts(t *testing.T) {
	b := buildSigned(t, 5, 400, 20)
	c, err := DecodeContent(b.content)
	if err != nil {
		t.Fatal(err)
	}
	c.Facts = c.Facts[1:] // drop one fact, keep the stated state
	m, _ := DecodeManifest(b.manifest)
	m.Facts--
	data := c.Marshal()
	m.ContentHash, m.ContentSize = sha256.Sum256(data), uint64(len(data))
	mb := m.Marshal()
	sigs := []events.SnapshotSignature{Sign(b.peers[0], mb), Sign(b.peers[1], mb)}
	if _, err := Verify(b.w.auth(), mb, sigs, data, Policy{}); !events.IsReason(err, events.ReasonTampered) {
		t.Fatalf("content whose facts do not fold to its state: got %v", err)
	}
}

func TestManifestEncodingRoundTrips(t *testing.T) {
	b := buildSigned(t, 6, 50, 5)
	m, err := DecodeManifest(b.manifest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Marshal(), b.manifest) {
		t.Fatal("manifest does not re-encode to its bytes")
	}
	if m.Fence != 7 || m.CreatedAt.UnixMilli() != testNow.UnixMilli() {
		t.Fatalf("decoded fence %d at %s", m.Fence, m.CreatedAt)
	}
	if _, err := DecodeManifest(b.manifest[1:]); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("short manifest: %v", err)
	}
}
