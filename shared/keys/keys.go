// Package keys stores the Ed25519 keys of authorities, devices and peers
// as small JSON files. A private key file is readable by its owner only
// (0600); Load refuses one that others can read, because a leaked
// authority key lets anyone mint tokens for its journal.
//
// Format:
//
//	{"type": "factsync-ed25519-private-key", "use": "device",
//	 "id": "<26-char key id>", "public": "<hex>", "seed": "<hex>"}
//
// A public key file has type "factsync-ed25519-public-key" and no seed.
package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/factsync/factsync/events"
)

// Use says what a key is for. A key file names its use so that a device
// key cannot be loaded by mistake where an authority key is expected.
type Use string

// The uses of a key.
const (
	Authority Use = "authority"
	Device    Use = "device"
	Peer      Use = "peer"
	// Approver keys sign release approvals and root policies (ota).
	Approver Use = "approver"
)

const (
	typePrivate = "factsync-ed25519-private-key"
	typePublic  = "factsync-ed25519-public-key"
	maxFileSize = 4 << 10
)

type file struct {
	Type   string `json:"type"`
	Use    Use    `json:"use"`
	ID     string `json:"id"`
	Public string `json:"public"`
	Seed   string `json:"seed,omitempty"`
}

// Generate makes a new key from crypto/rand.
func Generate() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	return priv, err
}

// Save writes key to a new file at path with mode 0600, creating the
// directory (0700) if needed. It never overwrites an existing file: a key
// replaced by accident cannot be recovered.
func Save(path string, use Use, key ed25519.PrivateKey) error {
	if len(key) != ed25519.PrivateKeySize {
		return events.Errorf(events.ReasonMalformed, "%s key is %d bytes, want %d", use, len(key), ed25519.PrivateKeySize)
	}
	pub := key.Public().(ed25519.PublicKey)
	return write(path, 0o600, file{Type: typePrivate, Use: use, ID: events.KeyID(pub), Public: hex.EncodeToString(pub), Seed: hex.EncodeToString(key.Seed())})
}

// SavePublic writes a public key file (mode 0644) that others may read,
// for example an authority key handed to a peer.
func SavePublic(path string, use Use, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return events.Errorf(events.ReasonMalformed, "%s public key is %d bytes, want %d", use, len(pub), ed25519.PublicKeySize)
	}
	return write(path, 0o644, file{Type: typePublic, Use: use, ID: events.KeyID(pub), Public: hex.EncodeToString(pub)})
}

func write(path string, mode fs.FileMode, f file) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("keys: directory for %s: %w", path, err)
	}
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return events.Errorf(events.ReasonConflict, "key file %s already exists; refusing to overwrite it", path)
		}
		return fmt.Errorf("keys: create %s: %w", path, err)
	}
	_, err = out.Write(append(data, '\n'))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("keys: write %s: %w", path, err)
	}
	return nil
}

// Load reads a private key file of the given use. It fails, naming the
// file, when the file is readable by group or others, is not a factsync
// key file, is for another use, or its public key does not match its seed.
func Load(path string, use Use) (ed25519.PrivateKey, error) {
	f, err := read(path, use)
	if err != nil {
		return nil, err
	}
	if f.Type != typePrivate {
		return nil, events.Errorf(events.ReasonMalformed, "%s holds a public key only; a private %s key is needed", path, use)
	}
	if err := checkPrivate(path); err != nil {
		return nil, err
	}
	seed, err := hex.DecodeString(f.Seed)
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, events.Errorf(events.ReasonMalformed, "%s: seed is not %d hex-encoded bytes", path, ed25519.SeedSize)
	}
	key := ed25519.NewKeyFromSeed(seed)
	if hex.EncodeToString(key.Public().(ed25519.PublicKey)) != f.Public {
		return nil, events.Errorf(events.ReasonMalformed, "%s: public key does not match the seed; the file is corrupt or edited", path)
	}
	return key, nil
}

// LoadPublic reads the public key from a public or a private key file of
// the given use.
func LoadPublic(path string, use Use) (ed25519.PublicKey, error) {
	f, err := read(path, use)
	if err != nil {
		return nil, err
	}
	pub, err := hex.DecodeString(f.Public)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, events.Errorf(events.ReasonMalformed, "%s: public key is not %d hex-encoded bytes", path, ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(pub), nil
}

// LoadOrGenerate loads the key at path, or generates and saves one when
// no file exists there. created reports which happened.
func LoadOrGenerate(path string, use Use) (key ed25519.PrivateKey, created bool, err error) {
	key, err = Load(path, use)
	if !events.IsReason(err, events.ReasonNotFound) {
		return key, false, err
	}
	if key, err = Generate(); err != nil {
		return nil, false, err
	}
	if err := Save(path, use, key); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

func read(path string, use Use) (file, error) {
	var f file
	data, err := readSmall(path)
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return f, events.Wrap(events.ReasonMalformed, err, fmt.Sprintf("%s is not a factsync key file", path))
	}
	if f.Type != typePrivate && f.Type != typePublic {
		return f, events.Errorf(events.ReasonMalformed, "%s is not a factsync key file (type %q)", path, f.Type)
	}
	if f.Use != use {
		return f, events.Errorf(events.ReasonMalformed, "%s holds a %s key, not a %s key", path, f.Use, use)
	}
	return f, nil
}

func readSmall(path string) ([]byte, error) {
	in, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, events.Errorf(events.ReasonNotFound, "key file %s does not exist", path)
		}
		return nil, fmt.Errorf("keys: open %s: %w", path, err)
	}
	defer in.Close()
	data, err := io.ReadAll(io.LimitReader(in, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("keys: read %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, events.Errorf(events.ReasonMalformed, "%s is larger than a key file can be", path)
	}
	return data, nil
}

// checkPrivate refuses a private key file that group or others can
// access. Windows has no such mode bits.
func checkPrivate(path string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("keys: stat %s: %w", path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return events.Errorf(events.ReasonMalformed, "private key file %s has mode %#o, open to group or others; run: chmod 600 %s", path, perm, path)
	}
	return nil
}
