package receipts

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"github.com/factsync/factsync/shared/atomicfile"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// CheckpointSource is where a witness reads another peer's log.
type CheckpointSource interface {
	// Latest returns the peer's latest signed checkpoint.
	Latest(ctx context.Context) ([]byte, error)
	// Consistency returns the proof that the peer's tree of oldSize
	// leaves is a prefix of its tree of newSize leaves.
	Consistency(ctx context.Context, oldSize, newSize int64) (tlog.TreeProof, error)
}

// WatchedPeer is a peer this peer witnesses.
type WatchedPeer struct {
	Key    ed25519.PublicKey // the peer's public key
	Source CheckpointSource
}

// ForkEvidence shows that a peer signed two checkpoints that are not
// consistent; see events.ForkEvidence.
type ForkEvidence = events.ForkEvidence

// Witness keeps the last checkpoint it saw of one peer, durably, and
// accepts a new one only with a consistency proof from it.
type Witness struct {
	peer    events.PeerID
	peerKey ed25519.PublicKey
	self    events.PeerID
	signer  note.Signer
	path    string
	last    *SignedCheckpoint
	// reported holds the checkpoints already reported as forks, so a peer
	// that keeps serving its forked checkpoint is reported once per run.
	reported map[tlog.Hash]bool
}

// NewWitness opens the witness state of the peer with public key peerKey in
// dir. self is the witnessing peer's key, which co-signs.
func NewWitness(dir string, peerKey ed25519.PublicKey, self ed25519.PrivateKey) (*Witness, error) {
	if _, err := CheckpointVerifier(peerKey); err != nil {
		return nil, err
	}
	selfID := events.PeerIDOf(self.Public().(ed25519.PublicKey))
	signer, err := newKeySigner(witnessName(selfID), self)
	if err != nil {
		return nil, err
	}
	w := &Witness{
		peer:     events.PeerIDOf(peerKey),
		peerKey:  peerKey,
		self:     selfID,
		signer:   signer,
		path:     filepath.Join(dir, string(events.PeerIDOf(peerKey))),
		reported: make(map[tlog.Hash]bool),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(w.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		c, err := OpenCheckpoint(raw, peerKey)
		if err != nil {
			return nil, fmt.Errorf("receipts: witness state %s: %w", w.path, err)
		}
		w.last = &SignedCheckpoint{Checkpoint: c, Note: raw}
	}
	return w, nil
}

// WitnessVerifier returns the note verifier for co-signatures by the peer
// whose public key is pub, to open co-signed checkpoints with.
func WitnessVerifier(pub ed25519.PublicKey) (note.Verifier, error) {
	return newKeyVerifier(witnessName(events.PeerIDOf(pub)), pub)
}

// Observation is what a witness made of the peer's latest checkpoint: at
// most one of Cosigned and Fork is set; neither when nothing is new.
type Observation struct {
	Cosigned []byte        // the checkpoint with this witness's signature added
	Fork     *ForkEvidence // the peer showed two histories
}

// Observe fetches the peer's latest checkpoint and checks it against the
// last one this witness saw. A consistent newer checkpoint is co-signed
// and becomes the last seen; an inconsistent one is a fork. The first
// checkpoint seen is trusted as is. An error means the peer could not be
// checked (unreachable, bad signature), not that it forked.
func (w *Witness) Observe(ctx context.Context, src CheckpointSource) (Observation, error) {
	signed, err := src.Latest(ctx)
	if err != nil {
		return Observation{}, err
	}
	c, err := OpenCheckpoint(signed, w.peerKey)
	if err != nil {
		return Observation{}, err
	}
	last := w.last
	switch {
	case last == nil:
	case c.Size == last.Size && c.Root == last.Root:
		return Observation{}, nil
	case c.Size == last.Size:
		return w.fork(last.Note, signed, nil, checkConsistent(last.Checkpoint, c, nil)), nil
	case c.Size < last.Size:
		// An older checkpoint is fine if it is a prefix of what we saw.
		proof, err := src.Consistency(ctx, c.Size, last.Size)
		if err != nil {
			return Observation{}, err
		}
		if err := checkConsistent(c, last.Checkpoint, proof); err != nil {
			return w.fork(signed, last.Note, proof, err), nil
		}
		return Observation{}, nil
	default:
		proof, err := src.Consistency(ctx, last.Size, c.Size)
		if err != nil {
			return Observation{}, err
		}
		if err := checkConsistent(last.Checkpoint, c, proof); err != nil {
			return w.fork(last.Note, signed, proof, err), nil
		}
	}
	cosigned, err := w.cosign(signed)
	if err != nil {
		return Observation{}, err
	}
	if err := atomicfile.Write(w.path, signed); err != nil {
		return Observation{}, fmt.Errorf("receipts: store witnessed checkpoint: %w", err)
	}
	w.last = &SignedCheckpoint{Checkpoint: c, Note: signed}
	return Observation{Cosigned: cosigned}, nil
}

// cosign adds this witness's signature to the peer's signed checkpoint.
func (w *Witness) cosign(signed []byte) ([]byte, error) {
	v, err := CheckpointVerifier(w.peerKey)
	if err != nil {
		return nil, err
	}
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		return nil, err
	}
	return note.Sign(n, w.signer)
}

func (w *Witness) fork(older, newer []byte, proof tlog.TreeProof, why error) Observation {
	key := tlog.RecordHash(append(append([]byte(nil), older...), newer...))
	if w.reported[key] {
		return Observation{}
	}
	w.reported[key] = true
	return Observation{Fork: &ForkEvidence{
		Peer: w.peer, Witness: w.self,
		Older: string(older), Newer: string(newer),
		Proof: proof, Detail: why.Error(),
	}}
}

// openWitnesses opens the witness state of every watched peer.
func (r *run) openWitnesses() ([]*Witness, error) {
	ws := make([]*Witness, len(r.cfg.Witness))
	for i, p := range r.cfg.Witness {
		w, err := NewWitness(filepath.Join(r.env.DataDir, "witness"), p.Key, r.env.PeerKey)
		if err != nil {
			return nil, err
		}
		ws[i] = w
	}
	return ws, nil
}

func (r *run) witness(ctx context.Context, w *Witness, src CheckpointSource) {
	obs, err := w.Observe(ctx, src)
	if err != nil {
		r.logger().Warn("receipts: cannot witness peer", "peer", w.peer, "err", err)
		return
	}
	switch {
	case obs.Fork != nil:
		r.forks.Add(ctx, 1, peerAttr(w.peer))
		r.logger().Error("receipts: FORK: peer signed two inconsistent checkpoints", "peer", w.peer, "detail", obs.Fork.Detail)
		body, err := events.EncodeForkEvidence(*obs.Fork)
		if err != nil {
			r.logger().Error("receipts: encode fork evidence", "peer", w.peer, "err", err)
			return
		}
		id := fmt.Sprintf("fork:%s:%x", w.peer, tlog.RecordHash(body))
		if err := r.publishEvent(ctx, events.ForkSubject(w.peer), id, body); err != nil {
			r.logger().Error("receipts: publish fork evidence", "peer", w.peer, "err", err)
		}
	case obs.Cosigned != nil:
		r.cosigned.Add(ctx, 1, peerAttr(w.peer))
		id := fmt.Sprintf("cosigned:%s:%x", w.peer, tlog.RecordHash(obs.Cosigned))
		if err := r.publishEvent(ctx, events.CosignedSubject(w.peer, w.self), id, obs.Cosigned); err != nil {
			r.logger().Warn("receipts: publish co-signed checkpoint", "peer", w.peer, "err", err)
		}
	}
}
