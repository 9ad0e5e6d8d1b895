package riblt

import (
	"container/heap"
	"math"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
)

// Decoder is the receiving side of a session. It subtracts the receiver's
// own sketch from each coded symbol that arrives, which leaves the coding
// of the symmetric difference, and peels that as symbols come in.
type Decoder struct {
	local *Sketch

	cells []cell // received symbols minus the receiver's: the coding of the difference
	// empties counts symbols past symbol 0 that held no differing id when
	// they arrived; it drives the estimate of the difference's size.
	empties int
	// logEmpty[i] is log(1-density(i)), cached for Estimate.
	logEmpty []float64
	pure     []int
	// recovered holds peeled prefixes, each with its mapping parked at its
	// next index past the symbols received, to apply to later symbols.
	recovered recoveredQueue
	seen      map[Prefix]struct{}

	remote, localOnly []Prefix
	err               error
}

// NewDecoder returns a decoder that reconciles against local, the sketch
// of the receiver's own set.
func NewDecoder(local *Sketch) *Decoder {
	return &Decoder{local: local, seen: map[Prefix]struct{}{}}
}

// Received returns how many symbols have arrived.
func (d *Decoder) Received() int { return len(d.cells) }

// Done reports whether the whole difference is known, as prefixes: symbol
// 0 holds every prefix, so once it is empty nothing is left to peel.
func (d *Decoder) Done() bool { return len(d.cells) > 0 && d.cells[0].empty() && d.err == nil }

// Remote returns the prefixes of the ids only the sender has (the
// receiver needs them).
func (d *Decoder) Remote() []Prefix { return d.remote }

// Local returns the prefixes of the ids only the receiver has (the sender
// needs them).
func (d *Decoder) Local() []Prefix { return d.localOnly }

// Confirm checks a decoded difference against the sender's fingerprint
// (Sketch.Fingerprint of the set its symbols code). fetched are the
// sender's facts whose ids start with a prefix of Remote, resolved the
// receiver's own for Local. Together they must turn the receiver's set
// into the sender's, whole id for whole id.
//
// Without a prefix collision they do. Two facts sharing a prefix, one on
// each side, cancel out of every symbol, and a prefix one side holds more
// than one fact under stands for facts the other side has too: either
// leaves the fingerprints apart, and Confirm fails with ReasonConflict,
// so the caller reconciles whole ids with negentropy instead of taking a
// wrong difference.
func (d *Decoder) Confirm(sender Fingerprint, fetched, resolved []events.FactID) error {
	if !d.Done() {
		return events.Errorf(events.ReasonInternal, "riblt: Confirm before the difference is decoded")
	}
	d.local.mu.RLock()
	sum, n := d.local.sum, d.local.n
	d.local.mu.RUnlock()
	var gained, lost negentropy.Accumulator
	for _, id := range dedup(fetched) {
		gained.Add(&id)
		n++
	}
	for _, id := range dedup(resolved) {
		lost.Add(&id)
		n--
	}
	sum.AddSum(&gained)
	sum.SubSum(&lost)
	if n < 0 || Fingerprint(sum.Fingerprint(uint64(n))) != sender {
		return events.Errorf(events.ReasonConflict, "the %d facts behind the %d riblt prefixes decoded (%d fetched, %d local) do not make this set the sender's: two facts share an id prefix; reconcile whole ids with negentropy",
			len(fetched)+len(resolved), len(d.remote)+len(d.localOnly), len(fetched), len(resolved))
	}
	return nil
}

func dedup(ids []events.FactID) []events.FactID {
	seen := make(map[events.FactID]struct{}, len(ids))
	out := ids[:0:0]
	for _, id := range ids {
		if _, dup := seen[id]; !dup {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}

// AddSymbols takes the next symbols in wire form, in order, and peels as
// far as they allow.
func (d *Decoder) AddSymbols(wire []byte) error {
	if d.err != nil {
		return d.err
	}
	if len(wire)%SymbolSize != 0 {
		return events.Errorf(events.ReasonMalformed, "riblt symbols are %d bytes, not a multiple of %d", len(wire), SymbolSize)
	}
	for ; len(wire) > 0; wire = wire[SymbolSize:] {
		i := len(d.cells)
		if i >= d.local.Size() {
			d.err = events.Errorf(events.ReasonTooLarge, "the difference needs more than the %d riblt symbols this peer keeps; reconcile with negentropy", d.local.Size())
			return d.err
		}
		c := cellFromWire(wire)
		mine := d.local.cell(i)
		c.subtract(&mine)
		if i > 0 && c.empty() {
			d.empties++
		}
		for len(d.recovered) > 0 && d.recovered[0].next.idx == uint64(i) {
			r := &d.recovered[0]
			c.apply(&r.id, r.checksum, -r.sign)
			r.next.next()
			heap.Fix(&d.recovered, 0)
		}
		d.cells = append(d.cells, c)
		d.logEmpty = append(d.logEmpty, math.Log1p(-density(i)))
		if _, ok := c.isPure(); ok {
			d.pure = append(d.pure, i)
		}
	}
	d.peel()
	return d.err
}

// peel recovers ids from pure cells until none is left.
func (d *Decoder) peel() {
	for len(d.pure) > 0 && d.err == nil {
		j := d.pure[len(d.pure)-1]
		d.pure = d.pure[:len(d.pure)-1]
		sign, ok := d.cells[j].isPure()
		if !ok {
			continue // already peeled through another cell
		}
		id := d.cells[j].sum
		if _, dup := d.seen[id]; dup {
			// A prefix is peeled out of every symbol at once, so it cannot
			// come back unless a symbol looked pure by a 2^-32 chance or
			// the sender is lying.
			d.err = events.Errorf(events.ReasonConflict, "riblt decoding recovered prefix %s twice: the symbols are inconsistent; reconcile with negentropy", id)
			return
		}
		d.seen[id] = struct{}{}
		if sign > 0 {
			d.remote = append(d.remote, id)
		} else {
			d.localOnly = append(d.localOnly, id)
		}
		sum := Checksum(&id)
		m := newMapping(sum)
		for i := m.idx; i < uint64(len(d.cells)); i = m.next() {
			d.cells[i].apply(&id, sum, -sign)
			if _, ok := d.cells[i].isPure(); ok {
				d.pure = append(d.pure, int(i))
			}
		}
		heap.Push(&d.recovered, recoveredID{id: id, checksum: sum, sign: sign, next: m})
	}
}

// Estimate returns an estimate of the size of the difference from the
// share of symbols that held none of it. Symbol i is empty with
// probability (1-density(i))^d, so d solves sum_i (1-density(i))^d =
// empties. ok is false while no symbol has been empty, when all that is
// known is that d is large compared with the symbols received.
func (d *Decoder) Estimate() (estimate float64, ok bool) {
	m := len(d.cells)
	if d.empties == 0 || m < 2 {
		return 0, false
	}
	expectedEmpties := func(diff float64) float64 {
		var sum float64
		for _, l := range d.logEmpty[1:] {
			sum += math.Exp(diff * l)
		}
		return sum
	}
	lo, hi := 0.0, float64(2*m)
	for expectedEmpties(hi) > float64(d.empties) && hi < 1e9 {
		lo, hi = hi, hi*2
	}
	for range 40 {
		mid := (lo + hi) / 2
		if expectedEmpties(mid) > float64(d.empties) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return max((lo+hi)/2, float64(len(d.seen))), true
}

// Sizing of requests for more symbols. Once symbols that hold none of
// the difference give an estimate of its size, a request asks for
// firstJump symbols per estimated id, a little under the 1.3-1.5 that
// decoding typically takes, and then for a further 1/minBatchFactor of
// what has arrived at a time. A request never more than doubles what has
// arrived, so a wrong estimate costs at most a round trip, not a flood.
//
// Measured over 20 seeds per size (TestBytesStayNearTheLowerBound holds
// the result): jumping to 1.1x the estimate and then growing
// by 1/16 sends fewer bytes and needs fewer round trips than jumping to
// 1.4x and growing by 1/32, because an over-estimate at the jump is paid
// in full while the small steps stop within 6% of where decoding ends.
const (
	FirstBatch     = 4
	firstJump      = 1.1
	minBatchFactor = 16
)

// NextBatch returns how many more symbols to ask for, or 0 when done.
func (d *Decoder) NextBatch() int {
	m := len(d.cells)
	switch {
	case d.Done() || d.err != nil:
		return 0
	case m == 0:
		return FirstBatch
	}
	want := m
	if est, ok := d.Estimate(); ok {
		want = int(math.Ceil(firstJump*est)) - m
	}
	want = min(max(want, 2, m/minBatchFactor), m)
	return min(want, d.local.Size()-m)
}

type recoveredID struct {
	id       Prefix
	checksum uint64
	sign     int
	next     mapping
}

// recoveredQueue is a min-heap of recovered ids by their next index.
type recoveredQueue []recoveredID

func (q recoveredQueue) Len() int           { return len(q) }
func (q recoveredQueue) Less(i, j int) bool { return q[i].next.idx < q[j].next.idx }
func (q recoveredQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *recoveredQueue) Push(x any)        { *q = append(*q, x.(recoveredID)) }
func (q *recoveredQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}
