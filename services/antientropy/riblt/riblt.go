// Package riblt reconciles large set differences with a rateless
// invertible Bloom lookup table (Yang, Gilad, Alizadeh: "Practical Rateless
// Set Reconciliation", SIGCOMM 2024).
//
// The sender's set is coded into an unending sequence of coded symbols.
// Every FactID goes into symbol 0 and into a pseudo-random, ever sparser
// selection of later symbols (symbol i holds an id with probability about
// 1/(1+i/2)). The receiver subtracts its own set's symbols, which leaves
// the coding of the symmetric difference, and peels it: a symbol that holds
// exactly one id gives that id away, which is then removed from every other
// symbol it went into. After about 1.35 to 1.7 symbols per differing id the
// receiver holds the whole difference, both directions, whatever the size
// of the sets. Symbols are a prefix of one fixed sequence, so the sender
// keeps the first Size of them up to date as facts arrive and a session
// only copies them out.
//
// A symbol on the wire is 36 bytes: the XOR of its ids (32 bytes) and the
// sum modulo 2^32 of their 32-bit checksums. Checksums add rather than XOR
// so that no count needs to travel: after the receiver subtracts its own
// symbol, a symbol holding one id x has checksum +checksum(x) when only
// the sender has x and -checksum(x) when only the receiver has it.
package riblt

import (
	"crypto/sha256"
	"encoding/binary"
	"math"

	"github.com/factsync/factsync/events"
)

// SymbolSize is the length of one coded symbol on the wire.
const SymbolSize = 32 + 4

// checksumDomain separates this checksum from every other use of SHA-256
// over a FactID.
const checksumDomain = "factsync/riblt/v1\x00"

// Checksum is the 64-bit checksum of an id. Its low 32 bits prove a symbol
// pure (it holds one id when its checksum is that id's); all 64 seed the
// id's mapping to symbols.
func Checksum(id *events.FactID) uint64 {
	var buf [len(checksumDomain) + 32]byte
	copy(buf[:], checksumDomain)
	copy(buf[len(checksumDomain):], id[:])
	sum := sha256.Sum256(buf[:])
	return binary.LittleEndian.Uint64(sum[:8])
}

// mapping walks the indexes of the symbols one id goes into, as in the
// paper's reference code: the gap after index i is drawn so that index i
// is hit with probability 1/(1+i/2).
type mapping struct {
	prng uint64
	idx  uint64
}

func newMapping(checksum uint64) mapping { return mapping{prng: checksum} }

// next returns the next index; the first index of every id is 0.
func (m *mapping) next() uint64 {
	r := m.prng * 0xda942042e4dd58b5
	m.prng = r
	gap := math.Ceil((float64(m.idx) + 1.5) * ((1<<32)/math.Sqrt(float64(r)+1) - 1))
	if gap >= math.MaxUint64/2 || m.idx+uint64(gap) < m.idx {
		m.idx = math.MaxUint64
	} else {
		m.idx += uint64(gap)
	}
	return m.idx
}

// density is the probability that one id goes into symbol i.
func density(i int) float64 { return 1 / (1 + float64(i)/2) }

// cell is one coded symbol: the XOR of its ids and the sum of their
// checksums' low 32 bits, each added with the sign of the side that holds
// it.
type cell struct {
	sum      events.FactID
	checksum uint32
}

func (c *cell) apply(id *events.FactID, checksum uint64, sign int) {
	for i := range c.sum {
		c.sum[i] ^= id[i]
	}
	if sign > 0 {
		c.checksum += uint32(checksum)
	} else {
		c.checksum -= uint32(checksum)
	}
}

// subtract removes o's contents from c.
func (c *cell) subtract(o *cell) {
	for i := range c.sum {
		c.sum[i] ^= o.sum[i]
	}
	c.checksum -= o.checksum
}

func (c *cell) empty() bool { return c.checksum == 0 && c.sum == events.FactID{} }

// isPure reports whether the cell holds exactly one id, and with which
// sign.
func (c *cell) isPure() (sign int, ok bool) {
	if c.sum == (events.FactID{}) {
		return 0, false
	}
	switch sum := uint32(Checksum(&c.sum)); c.checksum {
	case sum:
		return +1, true
	case -sum:
		return -1, true
	}
	return 0, false
}

func (c *cell) appendWire(b []byte) []byte {
	b = append(b, c.sum[:]...)
	return binary.LittleEndian.AppendUint32(b, c.checksum)
}

func cellFromWire(b []byte) cell {
	return cell{sum: events.FactID(b[:32]), checksum: binary.LittleEndian.Uint32(b[32:])}
}
