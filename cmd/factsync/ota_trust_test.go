package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/ota"
	"github.com/factsync/factsync/shared/keys"
)

// `ota ready --root` verifies a release only under the pinned policy or its
// next rotation; a policy of anyone else's making is refused.
func TestReadyTrustsOnlyThePinnedRootOrItsRotation(t *testing.T) {
	peer, _, _ := ed25519.GenerateKey(rand.Reader)
	spec := func(dir string) releaseSpec {
		return releaseSpec{dir: dir, approvers: 2, threshold: 2, peers: []ed25519.PublicKey{peer}, quorum: 1, expires: time.Hour}
	}
	pinnedDir, otherDir := t.TempDir(), t.TempDir()
	pinnedFile, err := makeRelease(spec(pinnedDir))
	if err != nil {
		t.Fatal(err)
	}
	otherFile, err := makeRelease(spec(otherDir))
	if err != nil {
		t.Fatal(err)
	}
	pinned, other := readRelease(t, pinnedFile), readRelease(t, otherFile)

	if _, err := trustedRoot(pinnedFile, pinned.Root, io.Discard); err != nil {
		t.Fatalf("the pinned policy itself: %v", err)
	}
	if _, err := trustedRoot(pinnedFile, other.Root, io.Discard); err == nil {
		t.Fatal("a policy signed by other root keys was trusted")
	}
	// Without a pin, any self-consistent policy is taken (and the device
	// is warned).
	if _, err := trustedRoot("", other.Root, io.Discard); err != nil {
		t.Fatalf("trust on first use: %v", err)
	}

	// Version 2, signed by the pinned root keys, is the next rotation.
	p, err := ota.ParseRoot(pinned.Root)
	if err != nil {
		t.Fatal(err)
	}
	var root events.OTARoot
	if err := json.Unmarshal(pinned.Root.Signed, &root); err != nil {
		t.Fatal(err)
	}
	root.Version = p.Version + 1
	var signers []ed25519.PrivateKey
	for i := 1; i <= 2; i++ {
		k, err := keys.Load(filepath.Join(pinnedDir, fmt.Sprintf("approver-%d.key", i)), keys.Approver)
		if err != nil {
			t.Fatal(err)
		}
		signers = append(signers, k)
	}
	next, err := ota.SignRoot(root, signers...)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := trustedRoot(pinnedFile, next, io.Discard); err != nil || got.Version != root.Version {
		t.Fatalf("the pinned policy's next rotation: %v, %v", got, err)
	}
	// A rotation of the other policy is no rotation of the pinned one.
	root.Version = 2
	var otherSigners []ed25519.PrivateKey
	for i := 1; i <= 2; i++ {
		k, _ := keys.Load(filepath.Join(otherDir, fmt.Sprintf("approver-%d.key", i)), keys.Approver)
		otherSigners = append(otherSigners, k)
	}
	forged, _ := ota.SignRoot(root, otherSigners...)
	if _, err := trustedRoot(pinnedFile, forged, io.Discard); err == nil {
		t.Fatal("a version 2 signed by other root keys was trusted")
	}
}

func readRelease(t *testing.T, file string) release {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rel release
	if err := json.Unmarshal(b, &rel); err != nil {
		t.Fatal(err)
	}
	return rel
}
