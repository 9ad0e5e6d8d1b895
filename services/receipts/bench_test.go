package receipts

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
)

func TestProofsForTwoToThe32EntriesHaveAtMost32Hashes(t *testing.T) {
	inclusion, consistency, err := ProofHashesAt(1 << 32)
	if err != nil {
		t.Fatal(err)
	}
	if inclusion != 32 {
		t.Fatalf("longest inclusion proof in a log of 2^32 entries has %d hashes, want 32", inclusion)
	}
	t.Logf("2^32 entries: inclusion proofs %d hashes, consistency proofs at most %d hashes", inclusion, consistency)
	if inc, _, _ := ProofHashesAt(1<<32 + 1); inc != 33 {
		t.Fatalf("one entry past 2^32 the longest proof has %d hashes, want 33", inc)
	}
}

func TestBenchReportsFigures(t *testing.T) {
	res, err := Bench(BenchConfig{Dir: t.TempDir(), Entries: 3000, Batch: 100, Verifies: 50})
	if err != nil {
		t.Fatal(err)
	}
	if res.AppendsPerSecond <= 0 || res.VerifyMicros <= 0 || res.VerifyAmortisedMicros <= 0 || res.SignatureMicros <= 0 || res.ProofHashes != 12 || res.InclusionHashesAt2To32 != 32 {
		t.Fatalf("implausible figures: %+v", res)
	}
	b, _ := json.Marshal(res)
	t.Logf("%s", b)
}

func BenchmarkAppend(b *testing.B) {
	l, err := OpenLog(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	leaves := benchLeaves(b.N)
	b.ResetTimer()
	for i := 0; i < len(leaves); i += 512 {
		if _, err := l.Append(leaves[i:min(i+512, len(leaves))]); err != nil {
			b.Fatal(err)
		}
		if err := l.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}

// benchReceipts returns n receipts, of leaves spread over a log of 2^20
// entries, against one signed checkpoint, and the peer's key.
func benchReceipts(b *testing.B, n int) ([][]byte, ed25519.PublicKey) {
	key := testKey("peer")
	l, err := OpenLog(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	leaves := benchLeaves(1 << 20)
	for i := 0; i < len(leaves); i += 4096 {
		if _, err := l.Append(leaves[i : i+4096]); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := l.SignCheckpoint(key); err != nil {
		b.Fatal(err)
	}
	receipts := make([][]byte, n)
	for i := range receipts {
		r, err := l.Receipt(leaves[(123456+i*7919)%len(leaves)].Fact)
		if err != nil {
			b.Fatal(err)
		}
		receipts[i], _ = json.Marshal(r)
	}
	return receipts, key.Public().(ed25519.PublicKey)
}

// reportReceipt reports the size of a receipt verified in a benchmark,
// after its timed loop (which would reset metrics reported before it).
func reportReceipt(b *testing.B, raw []byte) {
	var r Receipt
	if err := json.Unmarshal(raw, &r); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(r.InclusionProof)), "proof-hashes")
	b.ReportMetric(float64(len(raw)), "receipt-bytes")
}

// BenchmarkVerifyReceipt is the cold verification of one receipt: a fresh
// Verifier each time, so the checkpoint's signature is verified every
// time, as `factsync receipt verify` does.
func BenchmarkVerifyReceipt(b *testing.B) {
	receipts, pub := benchReceipts(b, 1)
	for b.Loop() {
		if err := VerifyReceipt(receipts[0], pub); err != nil {
			b.Fatal(err)
		}
	}
	reportReceipt(b, receipts[0])
}

// BenchmarkVerifierSameCheckpoint is the amortised verification of many
// receipts against one checkpoint with one Verifier: the signature is
// verified on the first receipt only.
func BenchmarkVerifierSameCheckpoint(b *testing.B) {
	receipts, pub := benchReceipts(b, 1000)
	v, err := NewVerifier(pub)
	if err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if err := v.VerifyReceipt(receipts[i%len(receipts)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	reportReceipt(b, receipts[0])
}

// BenchmarkEd25519Verify is the bare signature verification of the
// checkpoint, the floor under BenchmarkVerifyReceipt.
func BenchmarkEd25519Verify(b *testing.B) {
	receipts, pub := benchReceipts(b, 1)
	var r Receipt
	if err := json.Unmarshal(receipts[0], &r); err != nil {
		b.Fatal(err)
	}
	text, sig := noteSignature([]byte(r.Checkpoint))
	for b.Loop() {
		if !ed25519.Verify(pub, text, sig) {
			b.Fatal("signature does not verify")
		}
	}
}
