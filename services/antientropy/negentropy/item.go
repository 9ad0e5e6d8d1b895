package negentropy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"math/bits"

	"github.com/factsync/factsync/events"
)

// IDSize is the length of an item id: a FactID.
const IDSize = len(events.FactID{})

// FingerprintSize is the length of a range fingerprint on the wire.
const FingerprintSize = 16

// Infinity is the timestamp of the bound past every item.
const Infinity = math.MaxUint64

// Item is one element of a reconciled set. factsync's items are
// (HLC.Seconds(), FactID).
type Item struct {
	Timestamp uint64
	ID        events.FactID
}

// Compare orders items by timestamp, then id bytewise.
func (a Item) Compare(b Item) int {
	switch {
	case a.Timestamp < b.Timestamp:
		return -1
	case a.Timestamp > b.Timestamp:
		return 1
	}
	return bytes.Compare(a.ID[:], b.ID[:])
}

// Bound is a range boundary: the smallest item at or after it belongs to
// the next range. On the wire it carries only as many id bytes as it needs
// to separate two neighbouring items; the rest are zero.
type Bound struct {
	Item
	PrefixLen int
}

// minimalBound returns the shortest bound that sorts after prev and at or
// before curr, so ranges are described with as few bytes as possible.
func minimalBound(prev, curr Item) Bound {
	if curr.Timestamp != prev.Timestamp {
		return Bound{Item: Item{Timestamp: curr.Timestamp}}
	}
	shared := 0
	for shared < IDSize && curr.ID[shared] == prev.ID[shared] {
		shared++
	}
	b := Bound{Item: Item{Timestamp: curr.Timestamp}, PrefixLen: min(shared+1, IDSize)}
	copy(b.ID[:b.PrefixLen], curr.ID[:])
	return b
}

// Accumulator is the sum of ids as 256-bit little-endian integers modulo
// 2^256. Sums subtract, so the sum of any range is the difference of two
// prefix sums.
type Accumulator [4]uint64

// Add adds id to a.
func (a *Accumulator) Add(id *events.FactID) {
	var carry uint64
	for i := range a {
		a[i], carry = bits.Add64(a[i], binary.LittleEndian.Uint64(id[i*8:]), carry)
	}
}

// AddSum adds another accumulator to a.
func (a *Accumulator) AddSum(o *Accumulator) {
	var carry uint64
	for i := range a {
		a[i], carry = bits.Add64(a[i], o[i], carry)
	}
}

// SubSum subtracts another accumulator from a.
func (a *Accumulator) SubSum(o *Accumulator) {
	var borrow uint64
	for i := range a {
		a[i], borrow = bits.Sub64(a[i], o[i], borrow)
	}
}

// Fingerprint is the negentropy fingerprint of a range of count items whose
// ids sum to a: the first 16 bytes of SHA-256(sum || varint(count)).
func (a *Accumulator) Fingerprint(count uint64) [FingerprintSize]byte {
	buf := make([]byte, 0, IDSize+maxVarintLen)
	for _, w := range a {
		buf = binary.LittleEndian.AppendUint64(buf, w)
	}
	sum := sha256.Sum256(appendVarint(buf, count))
	return [FingerprintSize]byte(sum[:FingerprintSize])
}
