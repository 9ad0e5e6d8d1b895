package snapshot

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"github.com/factsync/factsync/shared/binread"
	"maps"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/shared/fold"
)

// Content is what a snapshot stores: the facts needed to rebuild the state
// at the cut, the tokens they cite, and the state itself in the fold's
// canonical encoding.
//
// The facts needed are, per document, the greatest delete (the tombstone
// that hides every older put, and that a late older put must still lose
// to) and the winning put of every visible field. Folding exactly these
// gives the same state as folding every fact before the cut: the same
// greatest delete, the same field winners, and the same latest version
// (the latest fact is always a tombstone or a field winner). Superseded
// puts and older deletes are dropped.
//
// Encoding ("fssnapc1"): magic, authority key (32 bytes), cut (u32
// big-endian), uvarint #tokens then each token as uvarint length + bytes
// in ascending hash order, uvarint #facts then each SignedFact as uvarint
// length + bytes in ascending (seconds, FactID) order, and uvarint length +
// the fold state encoding.
type Content struct {
	AuthorityKey ed25519.PublicKey
	Cut          uint32
	Tokens       [][]byte
	Facts        []*events.Fact
	State        []byte
}

const contentMagic = "fssnapc1"

// Built is a snapshot ready to store: its content encoding and the manifest
// that describes it (Creator, CreatedAt and Fence still to fill in).
type Built struct {
	Content  []byte
	Manifest Manifest
}

// Builder folds an authority's facts, in any order and with repeats, into
// a snapshot at a cut. It keeps the fold of the facts before the cut, the
// candidates for "needed", and the anti-entropy index of every fact seen.
type Builder struct {
	authKey ed25519.PublicKey
	cut     uint32
	state   *fold.State
	docs    map[docKey]*winners
	index   negentropy.Index
	tokens  map[string][]byte
	// pruned is what this peer's prunes removed from JOURNAL before the
	// cut: the fingerprint before the cut counts it back in (prune.go).
	pruned *idSum
}

type docKey struct{ coll, id string }

// winners are one document's needed facts so far.
type winners struct {
	deleted *events.Fact
	fields  map[string]*events.Fact
}

// NewBuilder starts a snapshot of the authority at cut.
func NewBuilder(authKey ed25519.PublicKey, cut uint32) *Builder {
	return &Builder{authKey: authKey, cut: cut, state: fold.New(), docs: map[docKey]*winners{}, tokens: map[string][]byte{}}
}

// AddToken makes a token available to the facts that cite it.
func (b *Builder) AddToken(token []byte) { b.tokens[events.TokenHash(token)] = token }

// AddFact takes one fact of the authority. Facts at or after the cut only
// enter the index (they count towards SummaryAfter, not the snapshot).
func (b *Builder) AddFact(f *events.Fact) error {
	if f.Authority != events.AuthorityIDOf(b.authKey) {
		return events.Errorf(events.ReasonMalformed, "fact %s is of authority %s, not %s", f.ID, f.Authority, events.AuthorityIDOf(b.authKey))
	}
	if !b.index.Insert(ItemOf(f)) || !BeforeCut(f, b.cut) {
		return nil
	}
	b.state.Apply(f)
	k := docKey{f.Collection(), f.Document()}
	w := b.docs[k]
	if w == nil {
		w = &winners{fields: map[string]*events.Fact{}}
		b.docs[k] = w
	}
	v := events.VersionOf(f)
	if f.IsDelete() {
		if w.deleted == nil || v.Compare(events.VersionOf(w.deleted)) > 0 {
			w.deleted = f
		}
		return nil
	}
	for name := range f.Fields() {
		if cur := w.fields[name]; cur == nil || v.Compare(events.VersionOf(cur)) > 0 {
			w.fields[name] = f
		}
	}
	return nil
}

// Index is the anti-entropy index of every fact added.
func (b *Builder) Index() *negentropy.Index { return &b.index }

// Build encodes the snapshot.
func (b *Builder) Build() (*Built, error) {
	needed := map[events.FactID]*events.Fact{}
	for _, w := range b.docs {
		var after events.Version
		if w.deleted != nil {
			needed[w.deleted.ID] = w.deleted
			after = events.VersionOf(w.deleted)
		}
		for _, f := range w.fields {
			if events.VersionOf(f).Compare(after) > 0 {
				needed[f.ID] = f
			}
		}
	}
	c := &Content{AuthorityKey: b.authKey, Cut: b.cut}
	c.Facts = slices.SortedFunc(maps.Values(needed), func(x, y *events.Fact) int { return ItemOf(x).Compare(ItemOf(y)) })
	cited := map[string]bool{}
	for _, f := range c.Facts {
		h := f.TokenHash()
		if b.tokens[h] == nil {
			return nil, events.Errorf(events.ReasonUnavailable, "token %.12s cited by fact %s is not in JOURNAL", h, f.ID)
		}
		cited[h] = true
	}
	for _, h := range slices.Sorted(maps.Keys(cited)) {
		c.Tokens = append(c.Tokens, b.tokens[h])
	}
	var err error
	if c.State, err = b.state.MarshalBinary(); err != nil {
		return nil, events.Wrap(events.ReasonInternal, err, "encode the fold state")
	}
	data := c.Marshal()
	return &Built{Content: data, Manifest: Manifest{
		AuthorityKey: b.authKey,
		Cut:          b.cut,
		Summary:      b.summaryBefore(),
		Facts:        uint64(len(c.Facts)),
		Documents:    documentCount(b.state),
		StateDigest:  b.state.Digest(),
		ContentHash:  sha256.Sum256(data),
		ContentSize:  uint64(len(data)),
	}}, nil
}

// summaryBefore is the fingerprint and count of every fact before the cut
// this peer ever held: those in the index, and those its prunes removed.
func (b *Builder) summaryBefore() SetSummary {
	if b.pruned == nil {
		return IndexSummary(&b.index, b.cut, false)
	}
	var sum negentropy.Accumulator
	count := uint64(0)
	b.index.View(func(s negentropy.Storage) {
		end := s.LowerBound(AfterCut(b.cut))
		sum, count = s.Sum(0, end), uint64(end)
	})
	sum.AddSum(&b.pruned.Sum)
	count += b.pruned.Count
	return summaryOfSum(sum, count)
}

// Stamp fills in who made the snapshot, when and under which fence, and
// returns the manifest encoding.
func (b *Built) Stamp(creator ed25519.PublicKey, at time.Time, fence uint64) []byte {
	b.Manifest.Creator, b.Manifest.CreatedAt, b.Manifest.Fence = creator, at.UTC().Truncate(time.Millisecond), fence
	return b.Manifest.Marshal()
}

// Marshal returns the content encoding.
func (c *Content) Marshal() []byte {
	var b []byte
	b = append(b, contentMagic...)
	b = append(b, c.AuthorityKey...)
	b = binary.BigEndian.AppendUint32(b, c.Cut)
	b = binary.AppendUvarint(b, uint64(len(c.Tokens)))
	for _, t := range c.Tokens {
		b = appendBytes(b, t)
	}
	b = binary.AppendUvarint(b, uint64(len(c.Facts)))
	for _, f := range c.Facts {
		b = appendBytes(b, f.Marshal())
	}
	return appendBytes(b, c.State)
}

func appendBytes(b, v []byte) []byte { return append(binary.AppendUvarint(b, uint64(len(v))), v...) }

// DecodeContent parses a content encoding and checks its shape: every fact
// decodes, is of the content's authority, falls before the cut, is in
// order and cites a token the content holds; tokens are in hash order. It
// does not verify signatures or the state (see Verify).
func DecodeContent(data []byte) (*Content, error) {
	r := binread.New(data, "snapshot content")
	if string(r.Next(len(contentMagic))) != contentMagic {
		return nil, events.Errorf(events.ReasonMalformed, "snapshot content does not start with %q", contentMagic)
	}
	c := &Content{AuthorityKey: ed25519.PublicKey(r.Next(ed25519.PublicKeySize))}
	if cut := r.Next(4); cut != nil {
		c.Cut = binary.BigEndian.Uint32(cut)
	}
	auth := events.AuthorityIDOf(c.AuthorityKey)
	tokens := map[string]bool{}
	prevHash := ""
	for range r.Count() {
		t := r.Bytes()
		h := events.TokenHash(t)
		if r.Err() == nil && h <= prevHash {
			return nil, events.Errorf(events.ReasonMalformed, "snapshot tokens are not in ascending hash order")
		}
		prevHash, tokens[h] = h, true
		c.Tokens = append(c.Tokens, t)
	}
	var prev *events.Fact
	for range r.Count() {
		raw := r.Bytes()
		if r.Err() != nil {
			break
		}
		f, err := events.DecodeFact(raw)
		switch {
		case err != nil:
			return nil, err
		case f.Authority != auth:
			return nil, events.Errorf(events.ReasonTampered, "fact %s is of authority %s, not the snapshot's %s", f.ID, f.Authority, auth)
		case !BeforeCut(f, c.Cut):
			return nil, events.Errorf(events.ReasonTampered, "fact %s at %s is not before the cut (second %d)", f.ID, f.HLC, c.Cut)
		case prev != nil && ItemOf(prev).Compare(ItemOf(f)) >= 0:
			return nil, events.Errorf(events.ReasonMalformed, "snapshot facts are not in ascending (seconds, id) order at %s", f.ID)
		case !tokens[f.TokenHash()]:
			return nil, events.Errorf(events.ReasonMalformed, "fact %s cites token %.12s, which the snapshot lacks", f.ID, f.TokenHash())
		}
		prev = f
		c.Facts = append(c.Facts, f)
	}
	c.State = r.Bytes()
	if err := r.Finish(); err != nil {
		return nil, err
	}
	return c, nil
}

// Verified is a snapshot that passed Verify.
type Verified struct {
	ID       string
	Manifest *Manifest
	Content  *Content
	State    *fold.State
}

// Verify checks a snapshot before anyone uses it, in order: the manifest
// decodes and names the expected authority; the content has the hash and
// size the manifest names; a threshold of distinct allowed peers signed the
// manifest; every fact decodes, is signed by its device, is of the
// authority and before the cut, and its token is present; and folding the
// facts gives exactly the stated documents. One changed byte of content
// fails the hash (ReasonTampered); a forged or re-signed manifest fails the
// signatures (ReasonBelowThreshold or ReasonBadSignature).
func Verify(auth events.AuthorityID, manifest []byte, sigs []events.SnapshotSignature, content []byte, p Policy) (*Verified, error) {
	return verify(auth, manifest, sigs, content, p, verifySignatures)
}

// verify is Verify with the check of the facts' device signatures given:
// a restore has the guard that will load the facts check them (restore.go).
func verify(auth events.AuthorityID, manifest []byte, sigs []events.SnapshotSignature, content []byte, p Policy, checkSignatures func([]*events.Fact) error) (*Verified, error) {
	m, err := DecodeManifest(manifest)
	if err != nil {
		return nil, err
	}
	if m.Authority() != auth {
		return nil, events.Errorf(events.ReasonTampered, "snapshot manifest is of authority %s, not %s", m.Authority(), auth)
	}
	if sum := sha256.Sum256(content); sum != m.ContentHash || uint64(len(content)) != m.ContentSize {
		return nil, events.Errorf(events.ReasonTampered, "snapshot content (%d bytes, sha256 %s) is not the content its manifest names (%d bytes, sha256 %s)",
			len(content), hex.EncodeToString(sum[:8]), m.ContentSize, hex.EncodeToString(m.ContentHash[:8]))
	}
	if err := p.CheckThreshold(manifest, sigs); err != nil {
		return nil, err
	}
	c, st, err := verifyContent(m, content, checkSignatures)
	if err != nil {
		return nil, err
	}
	return &Verified{ID: ManifestID(manifest), Manifest: m, Content: c, State: st}, nil
}

// verifyContent checks that content is what m describes, fact by fact and
// state by state. Creators and approvers run it on what they built too.
func verifyContent(m *Manifest, content []byte, checkSignatures func([]*events.Fact) error) (*Content, *fold.State, error) {
	c, err := DecodeContent(content)
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(c.AuthorityKey, m.AuthorityKey) || c.Cut != m.Cut || uint64(len(c.Facts)) != m.Facts {
		return nil, nil, events.Errorf(events.ReasonTampered, "snapshot content (authority %s, cut %d, %d facts) disagrees with its manifest (authority %s, cut %d, %d facts)",
			events.AuthorityIDOf(c.AuthorityKey), c.Cut, len(c.Facts), m.Authority(), m.Cut, m.Facts)
	}
	if err := checkSignatures(c.Facts); err != nil {
		return nil, nil, err
	}
	st := fold.New()
	for _, f := range c.Facts {
		st.Apply(f)
	}
	// The fold's encoding is canonical: the stated documents are the fold
	// exactly when their bytes are the fold's, and the digest is the
	// SHA-256 of those bytes (fold.State.Digest), so neither the stated
	// state nor the fold need decoding or encoding again.
	folded, _ := st.MarshalBinary()
	if !bytes.Equal(folded, c.State) || sha256.Sum256(folded) != m.StateDigest || documentCount(st) != m.Documents {
		return nil, nil, events.Errorf(events.ReasonTampered, "folding the snapshot's %d facts does not give the documents it states", len(c.Facts))
	}
	return c, st, nil
}

// documentCount counts the documents of a state, deleted ones included.
func documentCount(st *fold.State) uint64 {
	n := 0
	for _, coll := range st.Collections() {
		n += st.Len(coll)
	}
	return uint64(n)
}

// verifySignatures checks every fact's device signature, on every core:
// it is most of the cost of verifying a snapshot.
func verifySignatures(facts []*events.Fact) error {
	workers := min(runtime.GOMAXPROCS(0), max(len(facts)/256, 1))
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(facts); i += workers {
				if err := facts[i].VerifySignature(); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
