package receipts

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"

	"github.com/factsync/factsync/events"
)

// FuzzParseCheckpoint: no checkpoint text crashes the parser, and what
// parses is in the one form factsync writes: it prints back to the same
// text.
func FuzzParseCheckpoint(f *testing.F) {
	f.Add(Checkpoint{Origin: Origin("peer"), Size: 37}.Text())
	f.Add("o\n-0\n\n")
	f.Fuzz(func(t *testing.T, text string) {
		c, err := ParseCheckpoint(text)
		if err != nil {
			return
		}
		if c.Text() != text {
			t.Fatalf("%q parses but prints as %q", text, c.Text())
		}
	})
}

// FuzzVerifyReceipt checks arbitrary receipts against a peer key: none
// crashes the verifier, every refusal is malformed or bad_proof, and a
// receipt that verifies names a fact at the index where the log holds it,
// so the fuzzer cannot forge one.
func FuzzVerifyReceipt(f *testing.F) {
	key := testKey("peer")
	pub := key.Public().(ed25519.PublicKey)
	l, err := OpenLog(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	leaves := testLeaves("fuzz", 37)
	if _, err := l.Append(leaves); err != nil {
		f.Fatal(err)
	}
	if _, err := l.SignCheckpoint(key); err != nil {
		f.Fatal(err)
	}
	for _, i := range []int{0, 13, 36} {
		r, err := l.Receipt(leaves[i].Fact)
		if err != nil {
			f.Fatal(err)
		}
		raw, _ := json.Marshal(r)
		f.Add(raw)
	}
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		err := VerifyReceipt(raw, pub)
		if err != nil {
			if r := events.ReasonOf(err); r != events.ReasonMalformed && r != events.ReasonBadProof {
				t.Fatalf("refused as %s, want malformed or bad_proof: %v", r, err)
			}
			return
		}
		var r Receipt
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("verified a receipt that does not decode: %v", err)
		}
		fact, err := events.ParseFactID(r.FactID)
		if err != nil || r.LeafIndex < 0 || r.LeafIndex >= int64(len(leaves)) || leaves[r.LeafIndex].Fact != fact {
			t.Fatalf("verified a receipt of fact %s at index %d, which the log does not hold there", r.FactID, r.LeafIndex)
		}
	})
}
