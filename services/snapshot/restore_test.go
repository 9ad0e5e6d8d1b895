package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"sync/atomic"
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

// chunkySource serves a snapshot at most most bytes per fetch, and fails
// or lies about the size at one offset when told to.
type chunkySource struct {
	staticSource
	most     int64
	failAt   int64 // -1: never
	lieAt    int64 // -1: never
	fetches  atomic.Int64
	failWith error
}

func (s *chunkySource) Fetch(ctx context.Context, auth events.AuthorityID, id string, offset, limit int64) (events.SnapshotFetchReply, error) {
	s.fetches.Add(1)
	if offset == s.failAt {
		return events.SnapshotFetchReply{}, s.failWith
	}
	r, err := s.staticSource.Fetch(ctx, auth, id, offset, min(limit, s.most))
	if offset == s.lieAt {
		r.Size++
	}
	return r, err
}

// TestFetchReassemblesChunksServedShort: a restore fetches several chunks
// at once, each into its place; a source that serves fewer bytes than
// asked is asked again from where it stopped, a chunk whose reply names
// another size is tampered, and a failed fetch fails the whole.
func TestFetchReassemblesChunksServedShort(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	content := make([]byte, 3*fetchChunk+1234)
	for i := range content {
		content[i] = byte(rng.UintN(256))
	}
	info := events.SnapshotInfo{ID: "s", ContentSize: int64(len(content))}
	src := func() *chunkySource {
		return &chunkySource{staticSource: staticSource{info: info, content: content}, most: fetchChunk/3 + 11, failAt: -1, lieAt: -1}
	}
	ctx := testCtx(t)

	s := src()
	var last int64
	got, err := fetchContent(ctx, s, "a", info, func(done int64) { last = done })
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) || last != int64(len(content)) {
		t.Fatalf("fetched %d bytes (equal: %v), last progress %d; want the %d bytes served", len(got), bytes.Equal(got, content), last, len(content))
	}
	// Three whole chunks, each served in three parts, and a short last one.
	if n := s.fetches.Load(); n != 3*3+1 {
		t.Fatalf("%d fetches; want 10", n)
	}

	s = src()
	s.lieAt = fetchChunk
	if _, err := fetchContent(ctx, s, "a", info, func(int64) {}); !events.IsReason(err, events.ReasonTampered) {
		t.Fatalf("a chunk naming another size: %v; want tampered", err)
	}

	s = src()
	s.failAt, s.failWith = 2*fetchChunk, events.Errorf(events.ReasonNoRight, "no")
	if _, err := fetchContent(ctx, s, "a", info, func(int64) {}); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("a failed chunk: %v; want its error", err)
	}
}
