package riblt

import (
	"sync"

	"github.com/factsync/factsync/events"
)

// DefaultSketchSize is enough symbols for differences of about 22,000 ids,
// in 1.2 MB. Larger differences are left to negentropy.
const DefaultSketchSize = 1 << 15

// Sketch is the first Size coded symbols of a set, kept up to date as ids
// are added: an add touches about 2 ln(Size/2) symbols. It is safe for
// concurrent use.
type Sketch struct {
	mu    sync.RWMutex
	cells []cell
	n     int
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

// Add codes id into the sketch. The caller adds each id once; the index
// that feeds the sketch filters duplicates.
func (s *Sketch) Add(id events.FactID) {
	sum := Checksum(&id)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	applyMapped(s.cells, &id, sum, +1, 0)
}

// applyMapped applies an id to every cell of cells it maps to, from index
// from on, and returns the mapping positioned at the first index past
// cells.
func applyMapped(cells []cell, id *events.FactID, checksum uint64, sign int, from uint64) mapping {
	m := newMapping(checksum)
	size := uint64(len(cells))
	for i := m.idx; i < size; i = m.next() {
		if i >= from {
			cells[i].apply(id, checksum, sign)
		}
	}
	return m
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
	return &Sketch{cells: append([]cell(nil), s.cells...), n: s.n}
}
