package riblt

import (
	"encoding/hex"
	"sync"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
)

// DefaultSketchSize is enough symbols for differences of about 22,000 ids,
// in 786 KB. Larger differences are left to negentropy.
const DefaultSketchSize = 1 << 15

// Sketch is the first Size coded symbols of a set, kept up to date as ids
// are added: an add touches about 2 ln(Size/2) symbols. Beside them it
// keeps the set's Fingerprint over whole ids. It is safe for concurrent
// use.
type Sketch struct {
	mu    sync.RWMutex
	cells []cell
	n     int
	sum   negentropy.Accumulator // of the whole ids added
}

// NewSketch returns the sketch of the empty set with size symbols.
func NewSketch(size int) *Sketch { return &Sketch{cells: make([]cell, size)} }

// Size returns how many symbols the sketch keeps.
func (s *Sketch) Size() int { return len(s.cells) }

// Len returns how many ids have been added.
func (s *Sketch) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.n
}

// Add codes id's prefix into the sketch and id into its fingerprint. The
// caller adds each id once; the index that feeds the sketch filters
// duplicates.
func (s *Sketch) Add(id events.FactID) {
	p := PrefixOf(id)
	sum := Checksum(&p)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	s.sum.Add(&id)
	m := newMapping(sum)
	for i := m.idx; i < uint64(len(s.cells)); i = m.next() {
		s.cells[i].apply(&p, sum, +1)
	}
}

// Fingerprint identifies a set by its whole ids: negentropy's fingerprint
// (the sum of the ids modulo 2^256 and their count, hashed), which tells a
// receiver whether the facts behind the prefixes it decoded are the
// difference (Decoder.Confirm). It travels as lowercase hex.
type Fingerprint [negentropy.FingerprintSize]byte

// MarshalText implements encoding.TextMarshaler.
func (f Fingerprint) MarshalText() ([]byte, error) { return hex.AppendEncode(nil, f[:]), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (f *Fingerprint) UnmarshalText(b []byte) error {
	raw, err := hex.DecodeString(string(b))
	if err != nil || len(raw) != len(f) {
		return events.Errorf(events.ReasonMalformed, "riblt fingerprint %q is not %d hex characters", b, 2*len(f))
	}
	*f = Fingerprint(raw)
	return nil
}

// Fingerprint returns the fingerprint of the ids added.
func (s *Sketch) Fingerprint() Fingerprint {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sum.Fingerprint(uint64(s.n))
}

// AppendSymbols appends the wire form of symbols [from, to) to b.
func (s *Sketch) AppendSymbols(b []byte, from, to int) ([]byte, error) {
	if from < 0 || from > to || to > len(s.cells) {
		return b, events.Errorf(events.ReasonTooLarge, "riblt symbols [%d,%d) are past the %d this peer keeps; reconcile with negentropy", from, to, len(s.cells))
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i := from; i < to; i++ {
		b = s.cells[i].appendWire(b)
	}
	return b, nil
}

// cell returns a copy of symbol i.
func (s *Sketch) cell(i int) cell {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cells[i]
}

// Clone returns an independent copy of the sketch.
func (s *Sketch) Clone() *Sketch {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return &Sketch{cells: append([]cell(nil), s.cells...), n: s.n, sum: s.sum}
}
