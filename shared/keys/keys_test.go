package keys_test

import (
	"crypto/ed25519"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/keys"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "device.key")
	key, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.Save(path, keys.Device, key); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode(), err)
	}
	got, err := keys.Load(path, keys.Device)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(key) {
		t.Fatal("loaded key differs from saved key")
	}
	pub, err := keys.LoadPublic(path, keys.Device)
	if err != nil || !pub.Equal(key.Public()) {
		t.Fatalf("LoadPublic: %v", err)
	}
	if err := keys.Save(path, keys.Device, key); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("overwrite: want conflict, got %v", err)
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	key, _ := keys.Generate()
	good := filepath.Join(dir, "authority.key")
	if err := keys.Save(good, keys.Authority, key); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(good)
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	shortSeed := `{"type":"factsync-ed25519-private-key","use":"authority","public":"00","seed":"abcd"}`
	cases := []struct {
		name, path string
		use        keys.Use
		want       string
	}{
		{"world readable", write("open.key", string(raw), 0o644), keys.Authority, "chmod 600"},
		{"wrong use", good, keys.Device, "holds a authority key, not a device key"},
		{"not json", write("junk.key", "-----BEGIN", 0o600), keys.Authority, "not a factsync key file"},
		{"wrong type", write("type.key", `{"type":"ssh","use":"authority"}`, 0o600), keys.Authority, "not a factsync key file"},
		{"bad seed", write("seed.key", shortSeed, 0o600), keys.Authority, "seed is not 32"},
		{"missing", filepath.Join(dir, "none.key"), keys.Authority, "does not exist"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := keys.Load(c.path, c.use)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
				t.Fatalf("got %v, want an error naming %s and saying %q", err, c.path, c.want)
			}
		})
	}
}

func TestMismatchedPublicKeyIsCorrupt(t *testing.T) {
	dir := t.TempDir()
	a, _ := keys.Generate()
	b, _ := keys.Generate()
	pa, pb := filepath.Join(dir, "a.key"), filepath.Join(dir, "b.key")
	if err := keys.Save(pa, keys.Peer, a); err != nil {
		t.Fatal(err)
	}
	if err := keys.Save(pb, keys.Peer, b); err != nil {
		t.Fatal(err)
	}
	ra, _ := os.ReadFile(pa)
	pubA := []byte(hex.EncodeToString(a.Public().(ed25519.PublicKey)))
	pubB := []byte(hex.EncodeToString(b.Public().(ed25519.PublicKey)))
	mixed := strings.Replace(string(ra), string(pubA), string(pubB), 1)
	if err := os.WriteFile(pa+".mixed", []byte(mixed), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Load(pa+".mixed", keys.Peer); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("got %v", err)
	}
}

func TestPublicFileAndLoadOrGenerate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "peer.key")
	k1, created, err := keys.LoadOrGenerate(path, keys.Peer)
	if err != nil || !created {
		t.Fatalf("first LoadOrGenerate: created=%v err=%v", created, err)
	}
	k2, created, err := keys.LoadOrGenerate(path, keys.Peer)
	if err != nil || created || !k2.Equal(k1) {
		t.Fatalf("second LoadOrGenerate: created=%v err=%v", created, err)
	}
	pubPath := filepath.Join(dir, "peer.pub")
	if err := keys.SavePublic(pubPath, keys.Peer, k1.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	pub, err := keys.LoadPublic(pubPath, keys.Peer)
	if err != nil || !pub.Equal(k1.Public()) {
		t.Fatalf("LoadPublic: %v", err)
	}
	if _, err := keys.Load(pubPath, keys.Peer); err == nil || !strings.Contains(err.Error(), "public key only") {
		t.Fatalf("Load of a public file: %v", err)
	}
}
