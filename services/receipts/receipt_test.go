package receipts

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// signedLog returns a log of n leaves with a signed checkpoint over them.
func signedLog(t testing.TB, key ed25519.PrivateKey, n int) (*Log, []Leaf) {
	t.Helper()
	l := openLog(t, t.TempDir())
	leaves := testLeaves("receipts", n)
	mustAppend(t, l, leaves)
	if _, err := l.SignCheckpoint(key); err != nil {
		t.Fatal(err)
	}
	return l, leaves
}

func TestReceiptVerifiesOffline(t *testing.T) {
	key := testKey("peer")
	pub := key.Public().(ed25519.PublicKey)
	l, leaves := signedLog(t, key, 37)
	for _, i := range []int{0, 13, 36} {
		r, err := l.Receipt(leaves[i].Fact)
		if err != nil {
			t.Fatal(err)
		}
		if r.LeafIndex != int64(i) {
			t.Fatalf("receipt of leaf %d says index %d", i, r.LeafIndex)
		}
		if err := VerifyReceipt(mustJSON(r), pub); err != nil {
			t.Fatalf("receipt of leaf %d: %v", i, err)
		}
	}
	if _, err := l.Receipt(testLeaves("elsewhere", 1)[0].Fact); !events.IsReason(err, events.ReasonNotFound) {
		t.Fatalf("receipt of an unknown fact: %v", err)
	}
	mustAppend(t, l, testLeaves("later", 1))
	if _, err := l.Receipt(testLeaves("later", 1)[0].Fact); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("receipt of a fact no checkpoint covers yet: %v", err)
	}
}

// TestEveryTamperedPartFailsWithItsOwnReason flips one bit in each part of
// a receipt and requires each flip to fail, as bad_proof, with a message no
// other flip produces.
func TestEveryTamperedPartFailsWithItsOwnReason(t *testing.T) {
	key := testKey("peer")
	pub := key.Public().(ed25519.PublicKey)
	l, leaves := signedLog(t, key, 37)
	good, err := l.Receipt(leaves[13].Fact)
	if err != nil {
		t.Fatal(err)
	}
	if len(good.InclusionProof) < 5 {
		t.Fatalf("proof of %d hashes is too short to test", len(good.InclusionProof))
	}

	type tamper struct {
		part    string
		receipt Receipt
		key     ed25519.PublicKey
		want    string // a phrase the reason must contain
	}
	flipped := func(edit func(r *Receipt)) Receipt {
		r := *good
		r.InclusionProof = append([]tlog.Hash(nil), good.InclusionProof...)
		edit(&r)
		return r
	}
	cases := []tamper{
		{part: "fact id", want: "fact id is wrong", receipt: flipped(func(r *Receipt) {
			id, _ := events.ParseFactID(r.FactID)
			id[7] ^= 0x10
			r.FactID = id.String()
		})},
		{part: "leaf index", want: "leaf index is wrong", receipt: flipped(func(r *Receipt) { r.LeafIndex ^= 1 })},
		{part: "leaf index beyond the tree", want: "outside the checkpoint's tree", receipt: flipped(func(r *Receipt) { r.LeafIndex ^= 1 << 40 })},
		{part: "checkpoint body", want: "text was altered", receipt: flipped(func(r *Receipt) {
			text, sigs, _ := strings.Cut(r.Checkpoint, "\n\n")
			lines := strings.Split(text, "\n")
			root, _ := base64.StdEncoding.DecodeString(lines[2])
			root[0] ^= 1
			lines[2] = base64.StdEncoding.EncodeToString(root)
			r.Checkpoint = strings.Join(lines, "\n") + "\n\n" + sigs
		})},
		{part: "checkpoint signature", want: "signature is corrupt", receipt: flipped(func(r *Receipt) {
			text, sigs, _ := strings.Cut(r.Checkpoint, "\n\n")
			name, b64, _ := strings.Cut(strings.TrimPrefix(strings.TrimSuffix(sigs, "\n"), "— "), " ")
			sig, _ := base64.StdEncoding.DecodeString(b64)
			sig[4+10] ^= 0x40 // past the 4-byte key hash
			r.Checkpoint = text + "\n\n— " + name + " " + base64.StdEncoding.EncodeToString(sig) + "\n"
		})},
		{part: "peer key", want: "not signed by the given peer key", receipt: *good, key: func() ed25519.PublicKey {
			k := bytes.Clone(pub)
			k[3] ^= 2
			return k
		}()},
	}
	for k := range good.InclusionProof {
		cases = append(cases, tamper{part: fmt.Sprint("proof hash ", k), want: fmt.Sprintf("inclusion proof hash %d of", k), receipt: flipped(func(r *Receipt) {
			r.InclusionProof[k][31-k] ^= 0x80
		})})
	}

	// A Verifier that has verified the good receipt, and so remembers its
	// checkpoint, must fail each tampered one the same way.
	warm, err := NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.VerifyReceipt(mustJSON(good)); err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, c := range cases {
		k := c.key
		if k == nil {
			k = pub
		}
		err := VerifyReceipt(mustJSON(c.receipt), k)
		if c.key == nil {
			if warmErr := warm.VerifyReceipt(mustJSON(c.receipt)); fmt.Sprint(warmErr) != fmt.Sprint(err) {
				t.Errorf("%s flipped: a fresh verification says %v, a Verifier that knows the checkpoint says %v", c.part, err, warmErr)
			}
		}
		if !events.IsReason(err, events.ReasonBadProof) {
			t.Errorf("%s flipped: got %v, want a %s error", c.part, err, events.ReasonBadProof)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.want) {
			t.Errorf("%s flipped: %q does not say %q", c.part, msg, c.want)
		}
		if other, dup := seen[msg]; dup {
			t.Errorf("%s and %s fail with the same message %q", c.part, other, msg)
		}
		seen[msg] = c.part
		t.Logf("%-28s %s", c.part+":", msg)
	}
}

func TestMalformedReceipts(t *testing.T) {
	pub := testKey("peer").Public().(ed25519.PublicKey)
	for _, body := range []string{`{`, `{"fact_id":"zz"}`} {
		if err := VerifyReceipt([]byte(body), pub); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("%s: %v, want malformed", body, err)
		}
	}
	if err := VerifyReceipt(mustJSON(Receipt{FactID: strings.Repeat("ab", 32), Checkpoint: "junk"}), pub); !events.IsReason(err, events.ReasonBadProof) {
		t.Errorf("junk checkpoint: %v", err)
	}
	if err := VerifyReceipt(mustJSON(Receipt{FactID: strings.Repeat("ab", 32)}), pub[:5]); !events.IsReason(err, events.ReasonBadProof) {
		t.Errorf("short key: %v", err)
	}
}

func TestVerifyConsistency(t *testing.T) {
	key := testKey("peer")
	pub := key.Public().(ed25519.PublicKey)
	l := openLog(t, t.TempDir())
	leaves := testLeaves("c", 50)
	var cps [][]byte
	var sizes []int64
	for _, upTo := range []int{1, 2, 17, 32, 50} {
		mustAppend(t, l, leaves[:upTo])
		cp, err := l.SignCheckpoint(key)
		if err != nil {
			t.Fatal(err)
		}
		cps, sizes = append(cps, cp), append(sizes, int64(upTo))
	}
	for i := range cps {
		for j := i; j < len(cps); j++ {
			proof, err := l.ProveConsistency(sizes[i], sizes[j])
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(cps[i], cps[j], proof, pub); err != nil {
				t.Fatalf("%d -> %d: %v", sizes[i], sizes[j], err)
			}
			if len(proof) > 0 {
				proof[0][0] ^= 1
				if err := VerifyConsistency(cps[i], cps[j], proof, pub); !events.IsReason(err, events.ReasonBadProof) {
					t.Fatalf("%d -> %d with a flipped proof hash: %v", sizes[i], sizes[j], err)
				}
			}
		}
	}
	proof, _ := l.ProveConsistency(2, 17)
	if err := VerifyConsistency(cps[2], cps[1], proof, pub); !events.IsReason(err, events.ReasonBadProof) {
		t.Fatalf("newer given as older: %v", err)
	}
	// Another history of the same size signed by the same key is a fork.
	other, _ := signedLog(t, key, 17)
	forked := other.LastCheckpoint().Note
	if err := VerifyConsistency(cps[2], forked, nil, pub); err == nil || !strings.Contains(err.Error(), "two histories") {
		t.Fatalf("two roots at one size: %v", err)
	}
	if err := VerifyConsistency(cps[2], cps[4], proof, testKey("x").Public().(ed25519.PublicKey)); err == nil || !strings.Contains(err.Error(), "older checkpoint: ") {
		t.Fatalf("wrong key: %v", err)
	}
}

// countingNoteVerifier counts the signatures a Verifier checks.
type countingNoteVerifier struct {
	note.Verifier
	n *atomic.Int64
}

func (c countingNoteVerifier) Verify(msg, sig []byte) bool {
	c.n.Add(1)
	return c.Verifier.Verify(msg, sig)
}

// A Verifier checks each checkpoint's signature once, however many
// receipts carry it, remembers only checkpoints that verified, and keeps
// at most verifiedCheckpoints of them. Receipts are verified from several
// goroutines at once.
func TestVerifierChecksEachCheckpointOnce(t *testing.T) {
	key := testKey("peer")
	pub := key.Public().(ed25519.PublicKey)
	l := openLog(t, t.TempDir())
	leaves := testLeaves("v", verifiedCheckpoints+2)
	var receipts [][]byte // receipts[i] is of leaf 0 under the checkpoint of size i+1
	for i := range leaves {
		mustAppend(t, l, leaves[i:i+1])
		if _, err := l.SignCheckpoint(key); err != nil {
			t.Fatal(err)
		}
		r, err := l.Receipt(leaves[0].Fact)
		if err != nil {
			t.Fatal(err)
		}
		receipts = append(receipts, mustJSON(r))
	}
	v, err := NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	var checked atomic.Int64
	v.note = countingNoteVerifier{Verifier: v.note, n: &checked}
	expect := func(want int64, what string) {
		t.Helper()
		if got := checked.Load(); got != want {
			t.Fatalf("%s: %d signatures checked, want %d", what, got, want)
		}
	}

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				if err := v.VerifyReceipt(receipts[0]); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	// Goroutines that all started before the first one finished may each
	// have checked it; after that none does.
	first := checked.Load()
	if first < 1 || first > 8 {
		t.Fatalf("80 receipts of one checkpoint from 8 goroutines: %d signatures checked, want 1 to 8", first)
	}
	if err := v.VerifyReceipt(receipts[1]); err != nil {
		t.Fatal(err)
	}
	expect(first+1, "a receipt under a second checkpoint")
	if err := v.VerifyReceipt(receipts[0]); err != nil {
		t.Fatal(err)
	}
	expect(first+1, "the first checkpoint again")

	// A corrupt signature is checked every time: a failure is not remembered.
	var r Receipt
	_ = json.Unmarshal(receipts[0], &r)
	text, sigs, _ := strings.Cut(r.Checkpoint, "\n\n")
	name, b64, _ := strings.Cut(strings.TrimPrefix(strings.TrimSuffix(sigs, "\n"), "— "), " ")
	sig, _ := base64.StdEncoding.DecodeString(b64)
	sig[10] ^= 1
	r.Checkpoint = text + "\n\n— " + name + " " + base64.StdEncoding.EncodeToString(sig) + "\n"
	for range 2 {
		if err := v.VerifyReceipt(mustJSON(r)); !events.IsReason(err, events.ReasonBadProof) {
			t.Fatalf("corrupt signature: %v", err)
		}
	}
	expect(first+3, "a corrupt signature twice")

	// Past verifiedCheckpoints the oldest is forgotten.
	for _, raw := range receipts[2:] {
		if err := v.VerifyReceipt(raw); err != nil {
			t.Fatal(err)
		}
	}
	expect(first+3+int64(len(receipts)-2), "every other checkpoint once")
	if err := v.VerifyReceipt(receipts[0]); err != nil {
		t.Fatal(err)
	}
	expect(first+3+int64(len(receipts)-2)+1, "the first checkpoint once it was forgotten")
}
