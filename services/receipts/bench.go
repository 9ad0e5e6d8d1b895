package receipts

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/sumdb/tlog"
)

// BenchConfig sizes a receipts benchmark. The zero value is usable.
type BenchConfig struct {
	// Dir holds the benchmark's log; default a fresh temporary directory,
	// removed afterwards. Put it on the disk the service will use: appends
	// fsync.
	Dir string
	// Entries is how many facts to append; default 100000.
	Entries int
	// Batch is how many facts share one append and one Sync (the fsyncs
	// and the tree file); default 512. The service syncs less often, once
	// per checkpoint, so this is the rate of the log made durable at every
	// batch: a floor.
	Batch int
	// Verifies is how many receipts to verify; default 2000.
	Verifies int
}

// BenchResult is what `factsync bench receipts --json` reports.
type BenchResult struct {
	Entries          int     `json:"entries"`
	Batch            int     `json:"batch"`
	AppendsPerSecond float64 `json:"appends_per_second"`
	// ProofHashes is the longest inclusion proof among the verified
	// receipts, ReceiptBytes the size of that receipt's JSON.
	ProofHashes  int `json:"proof_hashes"`
	ReceiptBytes int `json:"receipt_bytes"`
	// VerifyMicros is the mean time of VerifyReceipt, each receipt on its
	// own (cold): JSON decoding, the checkpoint's Ed25519 signature and
	// the inclusion proof.
	VerifyMicros float64 `json:"verify_us"`
	// VerifyAmortisedMicros is the mean time of Verifier.VerifyReceipt
	// over the same receipts with one Verifier: they share a checkpoint,
	// whose signature it verifies once.
	VerifyAmortisedMicros float64 `json:"verify_amortised_us"`
	// SignatureMicros is the mean time of one bare ed25519.Verify of the
	// checkpoint on the same machine in the same run: the floor under
	// VerifyMicros, and the yardstick for a loaded machine.
	SignatureMicros float64 `json:"signature_verify_us"`
	// InclusionHashesAt2To32 and ConsistencyHashesAt2To32 are the longest
	// inclusion and consistency proofs in a log of 2^32 entries, computed
	// by tlog over the sampled leaf indexes and old sizes.
	InclusionHashesAt2To32   int `json:"inclusion_hashes_at_2_32"`
	ConsistencyHashesAt2To32 int `json:"consistency_hashes_at_2_32"`
}

// Bench appends synthetic FactIDs to a fresh log, signs a checkpoint and
// verifies receipts of it offline.
func Bench(cfg BenchConfig) (BenchResult, error) {
	cfg = cfg.withDefaults()
	res := BenchResult{Entries: cfg.Entries, Batch: cfg.Batch}
	dir := cfg.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "factsync-bench-receipts-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	l, err := OpenLog(dir)
	if err != nil {
		return res, err
	}
	defer l.Close()
	if size, _ := l.Size(); size != 0 {
		return res, fmt.Errorf("receipts bench: %s already holds a log of %d entries; give an empty directory", dir, size)
	}

	leaves := benchLeaves(cfg.Entries)
	start := time.Now()
	for i := 0; i < len(leaves); i += cfg.Batch {
		if _, err := l.Append(leaves[i:min(i+cfg.Batch, len(leaves))]); err != nil {
			return res, err
		}
		if err := l.Sync(); err != nil {
			return res, err
		}
	}
	res.AppendsPerSecond = float64(len(leaves)) / time.Since(start).Seconds()

	seed := sha256.Sum256([]byte("factsync receipts bench"))
	key := ed25519.NewKeyFromSeed(seed[:])
	if _, err := l.SignCheckpoint(key); err != nil {
		return res, err
	}
	receipts := make([][]byte, cfg.Verifies)
	for i := range receipts {
		r, err := l.Receipt(leaves[(i*7919)%len(leaves)].Fact)
		if err != nil {
			return res, err
		}
		receipts[i], _ = json.Marshal(r)
		if len(r.InclusionProof) >= res.ProofHashes {
			res.ProofHashes, res.ReceiptBytes = len(r.InclusionProof), len(receipts[i])
		}
	}
	pub := key.Public().(ed25519.PublicKey)
	start = time.Now()
	for _, r := range receipts {
		if err := VerifyReceipt(r, pub); err != nil {
			return res, err
		}
	}
	res.VerifyMicros = float64(time.Since(start).Microseconds()) / float64(len(receipts))
	v, err := NewVerifier(pub)
	if err != nil {
		return res, err
	}
	start = time.Now()
	for _, r := range receipts {
		if err := v.VerifyReceipt(r); err != nil {
			return res, err
		}
	}
	res.VerifyAmortisedMicros = float64(time.Since(start).Microseconds()) / float64(len(receipts))
	res.SignatureMicros = signatureMicros(l.LastCheckpoint().Note, pub, len(receipts))

	res.InclusionHashesAt2To32, res.ConsistencyHashesAt2To32, err = ProofHashesAt(1 << 32)
	return res, err
}

func (c BenchConfig) withDefaults() BenchConfig {
	if c.Entries <= 0 {
		c.Entries = 100_000
	}
	if c.Batch <= 0 {
		c.Batch = 512
	}
	if c.Verifies <= 0 {
		c.Verifies = 2000
	}
	return c
}

func benchLeaves(n int) []Leaf {
	leaves := make([]Leaf, n)
	for i := range leaves {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		leaves[i] = Leaf{Fact: sha256.Sum256(b[:]), Authority: events.AuthorityID("benchbenchbenchbenchbenchb")}
	}
	return leaves
}

// ProofHashesAt returns the longest inclusion proof and the longest
// consistency proof (to size) that tlog produces for a log of size
// entries, over leaf indexes and old sizes at both ends, at every power of
// two and in between. Proof lengths depend only on the positions, not on
// the hashes, so a reader of zero hashes stands in for the log.
func ProofHashesAt(size int64) (inclusion, consistency int, err error) {
	zero := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) { return make([]tlog.Hash, len(ix)), nil })
	var positions []int64
	for p := int64(1); p < size; p <<= 1 {
		positions = append(positions, p-1, p, p+1, p+p/3)
	}
	positions = append(positions, 0, size-2, size-1)
	for _, i := range positions {
		if i < 0 || i >= size {
			continue
		}
		p, err := tlog.ProveRecord(size, i, zero)
		if err != nil {
			return 0, 0, err
		}
		inclusion = max(inclusion, len(p))
		if i == 0 {
			continue
		}
		t, err := tlog.ProveTree(size, i, zero)
		if err != nil {
			return 0, 0, err
		}
		consistency = max(consistency, len(t))
	}
	return inclusion, consistency, nil
}

// signatureMicros times n bare Ed25519 verifications of a signed note's
// signature over its text.
func signatureMicros(signed []byte, pub ed25519.PublicKey, n int) float64 {
	text, sig := noteSignature(signed)
	start := time.Now()
	for range n {
		if !ed25519.Verify(pub, text, sig) {
			return -1
		}
	}
	return float64(time.Since(start).Microseconds()) / float64(n)
}

// noteSignature returns the signed text of a note with one signature and
// the Ed25519 signature over it.
func noteSignature(signed []byte) (text, sig []byte) {
	text, sigLine, _ := bytes.Cut(signed, []byte("\n\n"))
	text = append(text, '\n')
	_, b64, _ := bytes.Cut(bytes.TrimSpace(sigLine), []byte(" "))
	_, b64, _ = bytes.Cut(b64, []byte(" "))
	sig, _ = base64.StdEncoding.DecodeString(string(b64))
	return text, sig[4:] // after the key hash
}
