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
	if res.AppendsPerSecond <= 0 || res.VerifyMicros <= 0 || res.SignatureMicros <= 0 || res.ProofHashes != 12 || res.InclusionHashesAt2To32 != 32 {
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
	}
}

func BenchmarkVerifyReceipt(b *testing.B) {
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
	r, err := l.Receipt(leaves[123456].Fact)
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := json.Marshal(r)
	pub := key.Public().(ed25519.PublicKey)
	b.ReportMetric(float64(len(r.InclusionProof)), "proof-hashes")
	b.ReportMetric(float64(len(raw)), "receipt-bytes")
	b.ResetTimer()
	for b.Loop() {
		if err := VerifyReceipt(raw, pub); err != nil {
			b.Fatal(err)
		}
	}
}
