package receipts

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/factsync/factsync/shared/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is the body of a C2SP checkpoint (c2sp.org/tlog-checkpoint):
// the log's origin, its size and its root hash. It travels as a signed
// note (c2sp.org/signed-note) whose signer name is the origin.
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// Origin names the receipts log of peer in checkpoints and is the name of
// the note key that signs them. It is derived from the peer's key, so a
// verifier holding the key knows which origin to expect.
func Origin(peer events.PeerID) string { return "factsync.receipts/" + string(peer) }

// witnessName is the note key name a peer co-signs others' checkpoints with.
func witnessName(peer events.PeerID) string { return "factsync.witness/" + string(peer) }

// Text renders the checkpoint body: origin, size and base64 root, one per
// line.
func (c Checkpoint) Text() string {
	return fmt.Sprintf("%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root[:]))
}

// ParseCheckpoint parses a checkpoint body. It accepts exactly the three
// lines factsync writes; extension lines would be unsigned claims nobody
// here checks, so they are refused rather than silently carried.
func ParseCheckpoint(text string) (Checkpoint, error) {
	lines := strings.Split(text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		return Checkpoint{}, fmt.Errorf("checkpoint text has %d lines, want origin, size and root hash", len(lines)-1)
	}
	c := Checkpoint{Origin: lines[0]}
	if c.Origin == "" {
		return Checkpoint{}, errors.New("checkpoint origin is empty")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("checkpoint size %q is not a canonical decimal number", lines[1])
	}
	c.Size = size
	root, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return Checkpoint{}, fmt.Errorf("checkpoint root %q is not a base64 %d-byte hash", lines[2], tlog.HashSize)
	}
	copy(c.Root[:], root)
	return c, nil
}

// keySigner signs notes with an Ed25519 key under a name. It implements
// note.Signer directly so the peer's key never has to be rendered as a
// note private-key string.
type keySigner struct {
	name string
	hash uint32
	key  ed25519.PrivateKey
}

func newKeySigner(name string, key ed25519.PrivateKey) (*keySigner, error) {
	v, err := newKeyVerifier(name, key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	return &keySigner{name: name, hash: v.KeyHash(), key: key}, nil
}

func (s *keySigner) Name() string                    { return s.name }
func (s *keySigner) KeyHash() uint32                 { return s.hash }
func (s *keySigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.key, msg), nil }

// newKeyVerifier is the note verifier for an Ed25519 public key under name.
func newKeyVerifier(name string, pub ed25519.PublicKey) (note.Verifier, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, events.Errorf(events.ReasonBadProof, "peer key is %d bytes, want a %d-byte Ed25519 public key", len(pub), ed25519.PublicKeySize)
	}
	vkey, err := note.NewEd25519VerifierKey(name, pub)
	if err != nil {
		return nil, events.Wrap(events.ReasonBadProof, err, "peer key")
	}
	return note.NewVerifier(vkey)
}

// CheckpointVerifier returns the note verifier for the checkpoints of the
// peer whose public key is pub.
func CheckpointVerifier(pub ed25519.PublicKey) (note.Verifier, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, events.Errorf(events.ReasonBadProof, "peer key is %d bytes, want a %d-byte Ed25519 public key", len(pub), ed25519.PublicKeySize)
	}
	return newKeyVerifier(Origin(events.PeerIDOf(pub)), pub)
}

// SignCheckpoint syncs the log and signs a checkpoint of everything
// appended so far, unless nothing was appended since the last one (then
// it returns nil, nil). It first proves that the last checkpoint it signed
// is a prefix of the tree it is about to sign, and refuses to sign
// otherwise, so the log never shows two histories. The tree it signs is
// durable before it signs, and the signed checkpoint before it is
// returned, so it is never handed out and then forgotten, and a restart
// never finds a checkpoint larger than its log.
func (l *Log) SignCheckpoint(key ed25519.PrivateKey) ([]byte, error) {
	l.commitMu.Lock()
	defer l.commitMu.Unlock()
	last := l.LastCheckpoint()
	peer := events.PeerIDOf(key.Public().(ed25519.PublicKey))
	if last != nil && last.Origin != Origin(peer) {
		return nil, fmt.Errorf("receipts: this log was signed as %q but the peer key is now %q's: refusing to sign it under another origin (wrong data directory or key?)", last.Origin, Origin(peer))
	}
	if size, _ := l.Size(); size == 0 || last != nil && last.Size == size {
		return nil, nil // nothing to vouch for, or nothing new
	}
	tree, err := l.syncLocked()
	if err != nil {
		return nil, err
	}
	size, root := tree.Size, tree.Root
	if err := l.checkExtends(last, size, root); err != nil {
		return nil, err
	}
	signer, err := newKeySigner(Origin(peer), key)
	if err != nil {
		return nil, err
	}
	c := Checkpoint{Origin: Origin(peer), Size: size, Root: root}
	signed, err := note.Sign(&note.Note{Text: c.Text()}, signer)
	if err != nil {
		return nil, fmt.Errorf("receipts: sign checkpoint: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(l.dir, checkpointFile), signed); err != nil {
		return nil, fmt.Errorf("receipts: store checkpoint: %w", err)
	}
	l.mu.Lock()
	l.last = &SignedCheckpoint{Checkpoint: c, Note: signed}
	l.mu.Unlock()
	return signed, nil
}

// SignedCheckpoint is a checkpoint with the signed note it came in.
type SignedCheckpoint struct {
	Checkpoint
	Note []byte
}

// LastCheckpoint returns the last checkpoint this log signed, or nil.
func (l *Log) LastCheckpoint() *SignedCheckpoint {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.last
}

// checkExtends proves with a consistency proof over the stored hashes that
// the tree of size and root extends the checkpoint last.
func (l *Log) checkExtends(last *SignedCheckpoint, size int64, root tlog.Hash) error {
	if last == nil || last.Size == 0 {
		return nil // every tree extends the empty one
	}
	if last.Size > size {
		return fmt.Errorf("receipts: the log has %d leaves but a checkpoint of size %d was signed before: the log lost entries and signing on would fork it", size, last.Size)
	}
	proof, err := l.ProveConsistency(last.Size, size)
	if err == nil {
		err = tlog.CheckTree(proof, size, root, last.Size, last.Root)
	}
	if err != nil {
		return fmt.Errorf("receipts: the log at size %d is not consistent with the checkpoint signed before at size %d; refusing to sign a fork: %w", size, last.Size, err)
	}
	return nil
}

// loadCheckpoint reads the last signed checkpoint and checks the committed
// tree still extends it.
func (l *Log) loadCheckpoint() error {
	raw, err := os.ReadFile(filepath.Join(l.dir, checkpointFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("receipts: read last checkpoint: %w", err)
	}
	text, _, ok := bytes.Cut(raw, []byte("\n\n"))
	if !ok {
		return fmt.Errorf("receipts: last checkpoint %s is not a signed note", filepath.Join(l.dir, checkpointFile))
	}
	c, err := ParseCheckpoint(string(text) + "\n")
	if err != nil {
		return fmt.Errorf("receipts: last checkpoint: %w", err)
	}
	last := &SignedCheckpoint{Checkpoint: c, Note: raw}
	if err := l.checkExtends(last, l.size, l.root); err != nil {
		return err
	}
	l.last = last
	return nil
}

// ErrBehind is what Adopt returns for a checkpoint of more leaves than the
// log has yet: follow JOURNAL further and try again.
var ErrBehind = errors.New("receipts: the log has not reached the checkpoint yet")

// Adopt makes a checkpoint that this peer's key signed, on another replica
// of the service, this log's last checkpoint, so that this replica serves
// receipts under it and signs only trees that extend it. The log must
// have reached the checkpoint's size (ErrBehind otherwise), and its tree at
// that size must have the checkpoint's root: a log that disagrees with a
// checkpoint the peer published must never sign, so that is an error
// that names the fork. A checkpoint older than the log's last one is
// checked the same way and then kept as it is.
func (l *Log) Adopt(signed []byte, peer ed25519.PublicKey) error {
	c, err := OpenCheckpoint(signed, peer)
	if err != nil {
		return err
	}
	l.commitMu.Lock()
	defer l.commitMu.Unlock()
	if size, _ := l.Size(); c.Size > size {
		return ErrBehind
	}
	if c.Size > l.durable.Size {
		// The checkpoint file must never be ahead of the tree file.
		if _, err := l.syncLocked(); err != nil {
			return err
		}
	}
	root, err := l.TreeHashAt(c.Size)
	if err != nil {
		return err
	}
	if root != c.Root {
		return events.Errorf(events.ReasonConflict, "the peer published a checkpoint of %d leaves with root %s, but this replica's log has root %s at that size: the logs forked; refusing to serve or sign from this one",
			c.Size, base64.StdEncoding.EncodeToString(c.Root[:]), base64.StdEncoding.EncodeToString(root[:]))
	}
	if last := l.LastCheckpoint(); last != nil && last.Size >= c.Size {
		return nil
	}
	if err := atomicfile.Write(filepath.Join(l.dir, checkpointFile), signed); err != nil {
		return fmt.Errorf("receipts: store adopted checkpoint: %w", err)
	}
	l.mu.Lock()
	l.last = &SignedCheckpoint{Checkpoint: c, Note: signed}
	l.mu.Unlock()
	return nil
}
