package receipts

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Receipt proves that a peer accepted a fact, and where in its history:
// the fact is leaf LeafIndex of the tree the signed Checkpoint commits to.
// Anyone holding the peer's public key can check it offline with
// VerifyReceipt.
type Receipt struct {
	FactID         string      `json:"fact_id"`         // lowercase hex
	LeafIndex      int64       `json:"leaf_index"`      // 0-based position in the log
	Checkpoint     string      `json:"checkpoint"`      // C2SP signed checkpoint note
	InclusionProof []tlog.Hash `json:"inclusion_proof"` // RFC 6962 audit path, leaf to root, base64
}

// VerifyReceipt checks a receipt offline against the peer's Ed25519 public
// key: the checkpoint is signed by that peer's key for that peer's log, and
// the inclusion proof leads from the fact at the leaf index to the
// checkpoint's root. Every failure carries events.ReasonBadProof (or
// ReasonMalformed when the JSON does not decode) and says which part of
// the receipt is wrong. To verify many receipts of one peer, use a
// Verifier: it checks each checkpoint's signature once.
func VerifyReceipt(receiptJSON []byte, peerKey ed25519.PublicKey) error {
	v, err := NewVerifier(peerKey)
	if err != nil {
		return err
	}
	return v.verifyReceipt(receiptJSON, false)
}

// Verifier verifies receipts and checkpoints of one peer offline, as
// VerifyReceipt, OpenCheckpoint and VerifyConsistency do, and remembers
// the checkpoints whose signature it has verified. Receipts handed out
// together mostly carry the same checkpoint (the peer's latest), so a
// client that verifies many of them pays the Ed25519 verification, which
// is most of the cost of one receipt, once per checkpoint rather than
// once per receipt. A checkpoint is recognised by its exact signed bytes
// and was verified against this Verifier's key, so skipping the
// signature gives the answer verifying it again would. A Verifier is
// safe for concurrent use.
type Verifier struct {
	key  ed25519.PublicKey
	note note.Verifier

	mu       sync.Mutex
	verified map[string]Checkpoint // by signed note bytes
	order    []string              // verified's keys, oldest first, for eviction
}

// verifiedCheckpoints bounds how many verified checkpoints a Verifier
// remembers: a few hundred bytes each.
const verifiedCheckpoints = 64

// NewVerifier returns the verifier of the receipts and checkpoints of the
// peer whose public key is peerKey.
func NewVerifier(peerKey ed25519.PublicKey) (*Verifier, error) {
	v, err := CheckpointVerifier(peerKey)
	if err != nil {
		return nil, err
	}
	return &Verifier{key: peerKey, note: v}, nil
}

// VerifyReceipt checks a receipt as the function VerifyReceipt does.
func (v *Verifier) VerifyReceipt(receiptJSON []byte) error {
	return v.verifyReceipt(receiptJSON, true)
}

// verifyReceipt checks a receipt, and remembers its checkpoint if it
// verifies and remember is set (a one-off verification has no use for it).
func (v *Verifier) verifyReceipt(receiptJSON []byte, remember bool) error {
	r, err := decodeReceipt(receiptJSON)
	if err != nil {
		return err
	}
	fact, err := events.ParseFactID(r.FactID)
	if err != nil {
		return events.Errorf(events.ReasonMalformed, "receipt fact_id %q is not 64 hex characters", r.FactID)
	}
	leaf := leafClaim{fact: fact, index: r.LeafIndex, proof: r.InclusionProof}
	signed := []byte(r.Checkpoint)
	var c Checkpoint
	if remember {
		c, err = v.OpenCheckpoint(signed)
	} else {
		c, err = openCheckpoint(signed, v.note)
	}
	if errors.Is(err, errAlteredOrCorrupt) {
		return diagnoseSignature(signed, v.key, leaf)
	}
	if err != nil {
		return err
	}
	return leaf.check(c)
}

// OpenCheckpoint verifies a signed checkpoint as the function
// OpenCheckpoint does, or finds it among those it verified before.
func (v *Verifier) OpenCheckpoint(signed []byte) (Checkpoint, error) {
	v.mu.Lock()
	c, ok := v.verified[string(signed)]
	v.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := openCheckpoint(signed, v.note)
	if err != nil {
		return Checkpoint{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.verified[string(signed)]; !ok {
		if v.verified == nil {
			v.verified = make(map[string]Checkpoint)
		}
		if len(v.order) == verifiedCheckpoints {
			delete(v.verified, v.order[0])
			v.order = v.order[1:]
		}
		v.verified[string(signed)] = c
		v.order = append(v.order, string(signed))
	}
	return c, nil
}

// VerifyConsistency checks a consistency proof between two checkpoints as
// the function VerifyConsistency does.
func (v *Verifier) VerifyConsistency(older, newer []byte, proof tlog.TreeProof) error {
	o, err := v.OpenCheckpoint(older)
	if err != nil {
		return prefixError("older checkpoint", err)
	}
	n, err := v.OpenCheckpoint(newer)
	if err != nil {
		return prefixError("newer checkpoint", err)
	}
	return checkConsistent(o, n, proof)
}

// leafClaim is what a receipt says about its fact.
type leafClaim struct {
	fact  events.FactID
	index int64
	proof tlog.RecordProof
}

// check verifies the claim against a checkpoint whose signature is good.
func (l leafClaim) check(c Checkpoint) error {
	if l.index < 0 || l.index >= c.Size {
		return events.Errorf(events.ReasonBadProof, "leaf index %d is outside the checkpoint's tree of %d leaves: the leaf index is wrong", l.index, c.Size)
	}
	if err := tlog.CheckRecord(l.proof, c.Size, c.Root, l.index, LeafHash(l.fact)); err == nil {
		return nil
	}
	return l.diagnose(c)
}

// verifies reports whether the claim's proof leads to c's root.
func (l leafClaim) verifies(c Checkpoint) bool {
	return l.index >= 0 && l.index < c.Size &&
		tlog.CheckRecord(l.proof, c.Size, c.Root, l.index, LeafHash(l.fact)) == nil
}

// diagnose names the part of a receipt that makes a valid checkpoint's
// inclusion proof fail. A proof is one hash chain and either reaches the
// root or not, so it cannot say by itself which input is wrong. What it can
// say is which single flipped bit would make it verify: in the leaf index,
// in the fact id (then the proof is for another fact), or in one proof
// hash. That tells corruption in storage or transit apart from a receipt
// for the wrong fact. This search runs only after the proof has failed and
// costs at most a few hundred thousand hashes.
func (l leafClaim) diagnose(c Checkpoint) error {
	for bit := range 63 {
		alt := l
		alt.index ^= 1 << bit
		if alt.verifies(c) {
			return events.Errorf(events.ReasonBadProof, "the leaf index is wrong: the inclusion proof places fact %s at leaf %d, not %d", l.fact, alt.index, l.index)
		}
	}
	if want := proofLength(l.index, c.Size); len(l.proof) != want {
		return events.Errorf(events.ReasonBadProof, "the inclusion proof has %d hashes, but leaf %d of a tree of %d leaves needs %d", len(l.proof), l.index, c.Size, want)
	}
	for bit := range len(l.fact) * 8 {
		alt := l
		alt.fact[bit/8] ^= 1 << (bit % 8)
		if alt.verifies(c) {
			return events.Errorf(events.ReasonBadProof, "the fact id is wrong: the inclusion proof is for fact %s, not %s", alt.fact, l.fact)
		}
	}
	for k := range l.proof {
		for bit := range tlog.HashSize * 8 {
			alt := l
			alt.proof = append(tlog.RecordProof(nil), l.proof...)
			alt.proof[k][bit/8] ^= 1 << (bit % 8)
			if alt.verifies(c) {
				return events.Errorf(events.ReasonBadProof, "inclusion proof hash %d of %d is corrupt (one bit differs from the hash that verifies)", k, len(l.proof))
			}
		}
	}
	return events.Errorf(events.ReasonBadProof, "the inclusion proof does not lead from fact %s at leaf %d to the root of the checkpoint of size %d", l.fact, l.index, c.Size)
}

// proofLength is the number of hashes in an inclusion proof of leaf index
// in a tree of size leaves, found by asking tlog for one over a reader that
// only counts.
func proofLength(index, size int64) int {
	zero := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) { return make([]tlog.Hash, len(ix)), nil })
	p, err := tlog.ProveRecord(size, index, zero)
	if err != nil {
		return -1
	}
	return len(p)
}

// errAlteredOrCorrupt marks a checkpoint whose signature by the expected key
// is present but does not verify: either the text or the signature changed.
var errAlteredOrCorrupt = errors.New("checkpoint signature does not verify")

// OpenCheckpoint verifies a signed checkpoint note against the peer's
// public key and returns its body. The note must carry a valid signature by
// the key under the origin Origin(PeerIDOf(peerKey)), and its body must
// name that origin.
func OpenCheckpoint(signed []byte, peerKey ed25519.PublicKey) (Checkpoint, error) {
	v, err := CheckpointVerifier(peerKey)
	if err != nil {
		return Checkpoint{}, err
	}
	return openCheckpoint(signed, v)
}

func openCheckpoint(signed []byte, v note.Verifier) (Checkpoint, error) {
	n, err := note.Open(signed, note.VerifierList(v))
	var unverified *note.UnverifiedNoteError
	var invalid *note.InvalidSignatureError
	switch {
	case errors.As(err, &unverified):
		return Checkpoint{}, events.Errorf(events.ReasonBadProof, "the checkpoint is not signed by the given peer key (it expects a signature named %s with key hash %08x; the checkpoint is signed by %s): wrong peer key, or a checkpoint of another log",
			v.Name(), v.KeyHash(), signerList(unverified.Note.UnverifiedSigs))
	case errors.As(err, &invalid):
		return Checkpoint{}, events.Wrap(events.ReasonBadProof, errAlteredOrCorrupt, "the checkpoint's signature by "+v.Name()+" does not verify: the checkpoint text or its signature was altered")
	case err != nil:
		return Checkpoint{}, events.Wrap(events.ReasonBadProof, err, "the checkpoint is not a well-formed signed note")
	}
	c, err := ParseCheckpoint(n.Text)
	if err != nil {
		return Checkpoint{}, events.Wrap(events.ReasonBadProof, err, "the peer signed a checkpoint that does not parse")
	}
	if c.Origin != v.Name() {
		return Checkpoint{}, events.Errorf(events.ReasonBadProof, "the checkpoint is for log %q, but the peer key signs log %q", c.Origin, v.Name())
	}
	return c, nil
}

func signerList(sigs []note.Signature) string {
	names := make([]string, len(sigs))
	for i, s := range sigs {
		names[i] = fmt.Sprintf("%s (key hash %08x)", s.Name, s.Hash)
	}
	return strings.Join(names, ", ")
}

// diagnoseSignature tells an altered checkpoint text from a corrupt
// signature, both of which make the peer's signature fail. If the unsigned
// text still agrees with the rest of the receipt (its origin is the peer's
// and the inclusion proof reaches its root), the text is what the peer
// signed and the signature bytes are what changed.
func diagnoseSignature(signed []byte, peerKey ed25519.PublicKey, leaf leafClaim) error {
	text, _, _ := bytes.Cut(signed, []byte("\n\n"))
	c, err := ParseCheckpoint(string(text) + "\n")
	switch {
	case err != nil:
		return events.Wrap(events.ReasonBadProof, err, "the checkpoint text was altered after signing: its signature does not verify and it no longer parses")
	case c.Origin != Origin(events.PeerIDOf(peerKey)):
		return events.Errorf(events.ReasonBadProof, "the checkpoint text was altered after signing: its signature does not verify and its origin %q is not the peer's log", c.Origin)
	case leaf.verifies(c):
		return events.Errorf(events.ReasonBadProof, "the checkpoint signature is corrupt: the checkpoint text agrees with the inclusion proof, but the signature over it does not verify")
	default:
		return events.Errorf(events.ReasonBadProof, "the checkpoint text was altered after signing: its signature does not verify and its size %d and root no longer match the inclusion proof", c.Size)
	}
}

// VerifyConsistency checks offline that the checkpoint newer extends the
// checkpoint older of the same peer: both are signed by peerKey, and proof
// is an RFC 6962 consistency proof that the older tree is a prefix of the
// newer one. Two checkpoints of one size with different roots, or a proof
// that fails, mean the peer showed two histories.
func VerifyConsistency(older, newer []byte, proof tlog.TreeProof, peerKey ed25519.PublicKey) error {
	v, err := NewVerifier(peerKey)
	if err != nil {
		return err
	}
	return v.VerifyConsistency(older, newer, proof)
}

func checkConsistent(o, n Checkpoint, proof tlog.TreeProof) error {
	switch {
	case o.Size > n.Size:
		return events.Errorf(events.ReasonBadProof, "the older checkpoint has %d leaves and the newer only %d: give the smaller one as the older", o.Size, n.Size)
	case o.Size == n.Size && o.Root != n.Root:
		return events.Errorf(events.ReasonBadProof, "both checkpoints have %d leaves but different roots (%s, %s): the peer signed two histories", o.Size, o.Root, n.Root)
	}
	if o.Size == 0 {
		if empty, _ := tlog.TreeHash(0, nil); o.Root != empty || len(proof) != 0 {
			return events.Errorf(events.ReasonBadProof, "the older checkpoint is of the empty tree but has root %s, or the proof is not empty", o.Root)
		}
		return nil
	}
	if err := tlog.CheckTree(proof, n.Size, n.Root, o.Size, o.Root); err != nil {
		return events.Errorf(events.ReasonBadProof, "the consistency proof does not show the tree of %d leaves (root %s) is a prefix of the tree of %d leaves (root %s)", o.Size, o.Root, n.Size, n.Root)
	}
	return nil
}

func prefixError(what string, err error) error {
	var e *events.Error
	if errors.As(err, &e) {
		return &events.Error{Reason: e.Reason, Detail: what + ": " + e.Detail, Err: e.Err}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Receipt builds the receipt of a committed fact against the last signed
// checkpoint. A fact appended since then has no receipt yet
// (ReasonUnavailable): the next checkpoint, due within the checkpoint
// interval, will cover it.
func (l *Log) Receipt(id events.FactID) (*Receipt, error) {
	index, ok := l.Lookup(id)
	if !ok {
		return nil, events.Errorf(events.ReasonNotFound, "fact %s is not in this peer's receipts log", id)
	}
	last := l.LastCheckpoint()
	if last == nil || index >= last.Size {
		return nil, events.Errorf(events.ReasonUnavailable, "fact %s is at leaf %d, which no signed checkpoint covers yet; retry after the next checkpoint", id, index)
	}
	proof, err := l.ProveInclusion(index, last.Size)
	if err != nil {
		return nil, err
	}
	return &Receipt{FactID: id.String(), LeafIndex: index, Checkpoint: string(last.Note), InclusionProof: proof}, nil
}
