package receipts

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/factsync/factsync/events"
)

const testAuthority = events.AuthorityID("aaaaaaaaaaaaaaaaaaaaaaaaaa")

// testLeaves returns n distinct leaves, different for each seed.
func testLeaves(seed string, n int) []Leaf {
	leaves := make([]Leaf, n)
	for i := range leaves {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		leaves[i] = Leaf{Fact: sha256.Sum256(append([]byte(seed), b[:]...)), Authority: testAuthority}
	}
	return leaves
}

func testKey(seed string) ed25519.PrivateKey {
	s := sha256.Sum256([]byte(seed))
	return ed25519.NewKeyFromSeed(s[:])
}

func openLog(t testing.TB, dir string) *Log {
	t.Helper()
	l, err := OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func mustAppend(t testing.TB, l *Log, leaves []Leaf) int {
	t.Helper()
	n, err := l.Append(leaves)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAppendIsIdempotentAndSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	leaves := testLeaves("a", 10)
	if n := mustAppend(t, l, append(leaves[:6:6], leaves[2])); n != 6 {
		t.Fatalf("appended %d leaves, want 6 (one repeated in the batch)", n)
	}
	if n := mustAppend(t, l, leaves); n != 4 {
		t.Fatalf("appended %d leaves, want the 4 not yet in the log", n)
	}
	size, root := l.Size()
	l.Close()

	l = openLog(t, dir)
	if s, r := l.Size(); s != size || r != root {
		t.Fatalf("reopened at size %d root %s, want %d %s", s, r, size, root)
	}
	if n := mustAppend(t, l, leaves); n != 0 {
		t.Fatalf("reopened log appended %d known leaves again", n)
	}
	for i, leaf := range leaves {
		if got, ok := l.Lookup(leaf.Fact); !ok || got != int64(i) {
			t.Fatalf("leaf %d found at %d (%v)", i, got, ok)
		}
		if got, err := l.Leaf(int64(i)); err != nil || got != leaf {
			t.Fatalf("Leaf(%d) = %v, %v", i, got, err)
		}
	}
	if want := rootOf(t, leaves); root != want {
		t.Fatalf("root %s, want %s from a log built in one go", root, want)
	}
}

// rootOf builds a fresh log of leaves in one append and returns its root.
func rootOf(t *testing.T, leaves []Leaf) [32]byte {
	t.Helper()
	l := openLog(t, t.TempDir())
	mustAppend(t, l, leaves)
	_, root := l.Size()
	return root
}

func TestCrashBetweenLeavesAndTreeSizeLosesNothingAndRepeatsNothing(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	leaves := testLeaves("crash", 20)
	mustAppend(t, l, leaves[:8])
	key := testKey("peer")
	before, err := l.SignCheckpoint(key)
	if err != nil {
		t.Fatal(err)
	}
	crash := errors.New("simulated crash")
	l.beforeCommit = func() error { return crash }
	mustAppend(t, l, leaves[8:15])
	if err := l.Sync(); !errors.Is(err, crash) {
		t.Fatalf("sync with a crash before commit: %v", err)
	}
	l.Close()
	if st, _ := os.Stat(filepath.Join(dir, leavesFile)); st.Size() <= 8*int64(leafRecordSize) {
		t.Fatalf("the crashed append left no uncommitted leaves behind (%d bytes); the test does not exercise recovery", st.Size())
	}

	l = openLog(t, dir)
	if size, _ := l.Size(); size != 8 {
		t.Fatalf("after the crash the log resumed at %d leaves, want the 8 committed", size)
	}
	if cut := l.Interrupted(); cut.LeafBytes != 7*int64(leafRecordSize) || cut.HashBytes <= 0 {
		t.Fatalf("reopening dropped %+v, want the 7 leaves of the crashed append and their hashes", cut)
	}
	// The JOURNAL redelivers what was not acked, the crashed batch included.
	if n := mustAppend(t, l, leaves); n != 12 {
		t.Fatalf("redelivery appended %d, want 12", n)
	}
	if _, root := l.Size(); root != rootOf(t, leaves) {
		t.Fatal("the log after a crash differs from a log that never crashed")
	}
	after, err := l.SignCheckpoint(key)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := l.ProveConsistency(8, 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(before, after, proof, key.Public().(ed25519.PublicKey)); err != nil {
		t.Fatalf("checkpoints across the crash are not consistent: %v", err)
	}
}

func TestSignCheckpointOnlyWhenGrownAndRefusesAFork(t *testing.T) {
	key := testKey("peer")
	honest := t.TempDir()
	l := openLog(t, honest)
	mustAppend(t, l, testLeaves("a", 5))
	if c, err := l.SignCheckpoint(key); err != nil || c == nil {
		t.Fatalf("first checkpoint: %q, %v", c, err)
	}
	if c, err := l.SignCheckpoint(key); err != nil || c != nil {
		t.Fatalf("a checkpoint with nothing new: %q, %v", c, err)
	}
	if _, err := l.SignCheckpoint(testKey("other peer")); err == nil {
		t.Fatal("signed the log under another peer's origin")
	}
	l.Close()

	// A log with another history that finds this checkpoint as the one it
	// signed before must not start: signing on would fork.
	forked := t.TempDir()
	f := openLog(t, forked)
	mustAppend(t, f, testLeaves("b", 7))
	f.Close()
	cp, err := os.ReadFile(filepath.Join(honest, checkpointFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(forked, checkpointFile), cp, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLog(forked); err == nil {
		t.Fatal("opened a log inconsistent with the checkpoint it signed before")
	}
}

// A log whose files disagree with its tree file does not open, and the
// failed open leaves the tree file as it found it.
func TestCorruptLogIsRefusedAndLeftAlone(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	mustAppend(t, l, testLeaves("a", 9))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, treeFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var tree committedTree
	if err := json.Unmarshal(raw, &tree); err != nil || tree.Size != 9 {
		t.Fatalf("tree file after a clean close: %s (%v)", raw, err)
	}
	tree.Root[0] ^= 1
	corrupt := mustJSON(tree)
	if err := os.WriteFile(path, corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLog(dir); err == nil {
		t.Fatal("opened a log whose stored hashes disagree with its tree file")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, corrupt) {
		t.Fatalf("the failed open rewrote the tree file: %s, was %s", after, corrupt)
	}
}
