package receipts

import (
	"context"
	"crypto/ed25519"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// logSource serves a log's last checkpoint and proofs, as a peer would.
type logSource struct{ log *Log }

func (s logSource) Latest(context.Context) ([]byte, error) { return s.log.LastCheckpoint().Note, nil }
func (s logSource) Consistency(_ context.Context, o, n int64) (tlog.TreeProof, error) {
	return s.log.ProveConsistency(o, n)
}

func grow(t *testing.T, l *Log, key ed25519.PrivateKey, leaves []Leaf) {
	t.Helper()
	mustAppend(t, l, leaves)
	if _, err := l.SignCheckpoint(key); err != nil {
		t.Fatal(err)
	}
}

func TestWitnessCosignsConsistentCheckpointsAndReportsForks(t *testing.T) {
	ctx := context.Background()
	peerKey, witnessKey := testKey("peer"), testKey("witness")
	pub := peerKey.Public().(ed25519.PublicKey)
	dir := t.TempDir()
	w, err := NewWitness(dir, pub, witnessKey)
	if err != nil {
		t.Fatal(err)
	}
	honest := openLog(t, t.TempDir())
	leaves := testLeaves("h", 9)
	grow(t, honest, peerKey, leaves[:4])

	obs, err := w.Observe(ctx, logSource{honest})
	if err != nil || obs.Cosigned == nil || obs.Fork != nil {
		t.Fatalf("first checkpoint: %+v, %v", obs, err)
	}
	if again, err := w.Observe(ctx, logSource{honest}); err != nil || again.Cosigned != nil || again.Fork != nil {
		t.Fatalf("the same checkpoint again: %+v, %v", again, err)
	}
	grow(t, honest, peerKey, leaves)
	obs, err = w.Observe(ctx, logSource{honest})
	if err != nil || obs.Cosigned == nil {
		t.Fatalf("grown checkpoint: %+v, %v", obs, err)
	}
	pv, _ := CheckpointVerifier(pub)
	wv, _ := WitnessVerifier(witnessKey.Public().(ed25519.PublicKey))
	n, err := note.Open(obs.Cosigned, note.VerifierList(pv, wv))
	if err != nil || len(n.Sigs) != 2 {
		t.Fatalf("co-signed checkpoint does not carry both signatures: %v, %+v", err, n)
	}

	// The witness resumes from its stored state: a fork seen after a
	// restart of the witness is still a fork.
	w, err = NewWitness(dir, pub, witnessKey)
	if err != nil {
		t.Fatal(err)
	}
	// The peer signs a second history with the same key: one longer, one of
	// the same size.
	for _, size := range []int{12, 9} {
		forked := openLog(t, t.TempDir())
		grow(t, forked, peerKey, append(append([]Leaf(nil), leaves[:3]...), testLeaves("fork", size-3)...))
		obs, err = w.Observe(ctx, logSource{forked})
		if err != nil || obs.Fork == nil {
			t.Fatalf("fork at size %d not detected: %+v, %v", size, obs, err)
		}
		ev := obs.Fork
		if ev.Older != string(honest.LastCheckpoint().Note) || ev.Newer != string(forked.LastCheckpoint().Note) {
			t.Fatalf("evidence names the wrong checkpoints: %+v", ev)
		}
		if err := VerifyConsistency([]byte(ev.Older), []byte(ev.Newer), ev.Proof, pub); err == nil {
			t.Fatal("the fork evidence verifies as consistent")
		}
		if again, _ := w.Observe(ctx, logSource{forked}); again.Fork != nil {
			t.Fatal("the same fork was reported twice")
		}
	}
	// The honest log is still fine to the witness.
	if obs, err := w.Observe(ctx, logSource{honest}); err != nil || obs.Fork != nil {
		t.Fatalf("honest log after a fork elsewhere: %+v, %v", obs, err)
	}
}
