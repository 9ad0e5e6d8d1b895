package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/receipts"
)

// `receipt verify` takes several receipt files, verifies them with one
// Verifier, and names the file that fails.
func TestReceiptVerifyManyFiles(t *testing.T) {
	dir := t.TempDir()
	l, err := receipts.OpenLog(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var leaves []receipts.Leaf
	for i := range 20 {
		leaves = append(leaves, receipts.Leaf{Fact: sha256.Sum256(fmt.Appendf(nil, "fact %d", i)), Authority: "cliauthcliauthcliauthcliau"})
	}
	if _, err := l.Append(leaves); err != nil {
		t.Fatal(err)
	}
	seed := sha256.Sum256([]byte("cli receipts peer"))
	key := ed25519.NewKeyFromSeed(seed[:])
	if _, err := l.SignCheckpoint(key); err != nil {
		t.Fatal(err)
	}
	var files []string
	for i, leaf := range leaves[:3] {
		r, err := l.Receipt(leaf.Fact)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(r)
		files = append(files, filepath.Join(dir, fmt.Sprintf("r%d.json", i)))
		if err := os.WriteFile(files[i], raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	peerKey := hex.EncodeToString(key.Public().(ed25519.PublicKey))

	verify := func(files ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := execute(context.Background(), append([]string{"-o", "json", "receipt", "verify", "--peer-key", peerKey}, files...), &out, &errOut)
		return code, out.String() + errOut.String()
	}
	code, out := verify(files...)
	var res struct {
		Valid    bool `json:"valid"`
		Receipts int  `json:"receipts"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.Valid || res.Receipts != 3 {
		t.Fatalf("three good receipts: exit %d: %s", code, out)
	}

	// One bit of the second receipt's leaf index is flipped.
	var r receipts.Receipt
	raw, _ := os.ReadFile(files[1])
	_ = json.Unmarshal(raw, &r)
	r.LeafIndex ^= 1
	raw, _ = json.Marshal(r)
	if err := os.WriteFile(files[1], raw, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out = verify(files...)
	if code == 0 || !strings.Contains(out, files[1]) || !strings.Contains(out, string(events.ReasonBadProof)) || !strings.Contains(out, "leaf index is wrong") {
		t.Fatalf("a tampered receipt among three: exit %d: %s", code, out)
	}
}
