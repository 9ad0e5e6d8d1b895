package snapshot

import (
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
)

// staticSource serves one snapshot from memory.
type staticSource struct {
	info    events.SnapshotInfo
	content []byte
}

func (s staticSource) List(context.Context, events.AuthorityID) ([]events.SnapshotInfo, error) {
	return []events.SnapshotInfo{s.info}, nil
}

func (s staticSource) Fetch(_ context.Context, _ events.AuthorityID, _ string, offset, limit int64) (events.SnapshotFetchReply, error) {
	end := min(offset+limit, int64(len(s.content)))
	return events.SnapshotFetchReply{Data: s.content[offset:end], Size: int64(len(s.content))}, nil
}

// withForgedSignature returns b's content with one fact's signature
// changed, and a manifest naming that content signed by b's peers: a
// threshold that lies about the facts.
func withForgedSignature(t *testing.T, b *built) (manifest, content []byte, sigs []events.SnapshotSignature) {
	t.Helper()
	c, err := DecodeContent(b.content)
	if err != nil {
		t.Fatal(err)
	}
	f := *c.Facts[len(c.Facts)/2]
	f.Signature = append([]byte(nil), f.Signature...)
	f.Signature[3] ^= 0x10
	c.Facts[len(c.Facts)/2] = &f
	content = c.Marshal()
	m, _ := DecodeManifest(b.manifest)
	m.ContentHash, m.ContentSize = sha256.Sum256(content), uint64(len(content))
	manifest = m.Marshal()
	return manifest, content, []events.SnapshotSignature{Sign(b.peers[0], manifest), Sign(b.peers[1], manifest)}
}

// TestForgedFactSignatureIsRefused: a threshold of signers vouches for
// content with one fact's signature forged. Verify refuses it, and so does
// a restore, whose guard checks the signatures before anything is loaded:
// nothing reaches JOURNAL and no restore marker is written.
func TestForgedFactSignatureIsRefused(t *testing.T) {
	b := buildSigned(t, 41, 300, 15)
	manifest, content, sigs := withForgedSignature(t, b)
	if _, err := Verify(b.w.auth(), manifest, sigs, content, Policy{}); !events.IsReason(err, events.ReasonBadSignature) {
		t.Fatalf("Verify of a snapshot with a forged fact signature: %v; want bad_signature", err)
	}

	rng := rand.New(rand.NewPCG(42, 42))
	d := startPeer(t, rng, clock.NewFake(testNow), noTriggers)
	ctx, auth := testCtx(t), b.w.auth()
	m, _ := DecodeManifest(manifest)
	src := staticSource{content: content, info: events.SnapshotInfo{
		ID: ManifestID(manifest), Authority: auth, CutSeconds: m.Cut, ContentSize: int64(len(content)),
		Committed: true, Manifest: manifest, Signatures: sigs,
	}}
	if _, err := d.snap.Restore(ctx, auth, src); !events.IsReason(err, events.ReasonBadSignature) {
		t.Fatalf("restore of a snapshot with a forged fact signature: %v; want bad_signature", err)
	}
	if n := d.journalFacts(auth); n != 0 {
		t.Fatalf("JOURNAL holds %d facts of the refused snapshot", n)
	}
	if _, found, err := ReadRestoreMarker(ctx, d.snap.restore.Markers, auth); err != nil || found {
		t.Fatalf("restore marker found=%v (%v) after a refused snapshot", found, err)
	}

	// The same snapshot, honest, restores.
	m, _ = DecodeManifest(b.manifest)
	honest := staticSource{content: b.content, info: events.SnapshotInfo{
		ID: ManifestID(b.manifest), Authority: auth, CutSeconds: m.Cut, ContentSize: int64(len(b.content)),
		Committed: true, Manifest: b.manifest, Signatures: b.sigs,
	}}
	v, err := d.snap.Restore(ctx, auth, honest)
	if err != nil {
		t.Fatal(err)
	}
	if n := d.journalFacts(auth); n != uint64(len(v.Content.Facts)) {
		t.Fatalf("JOURNAL holds %d facts, the snapshot %d", n, len(v.Content.Facts))
	}
}
