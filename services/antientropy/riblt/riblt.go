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
// What is coded is not the whole FactID but its first PrefixSize (20)
// bytes, so a symbol on the wire is 24 bytes: the XOR of its prefixes and
// the sum modulo 2^32 of their 32-bit checksums. Checksums add rather than
// XOR so that no count needs to travel: after the receiver subtracts its
// own symbol, a symbol holding one prefix p has checksum +checksum(p) when
// only the sender has it and -checksum(p) when only the receiver has it.
// The receiver thus learns the prefixes of the difference; the facts
// behind them are fetched (or, for its own, looked up) by prefix.
//
// Two facts sharing a prefix are indistinguishable to the coding: one on
// each side cancels out, as if both sides held the same fact. So a decoded
// difference is only trusted once the facts behind its prefixes turn the
// receiver's Fingerprint into the sender's (Decoder.Confirm): the
// fingerprint is over whole ids, and a prefix collision that hid or added
// a fact shows there as a mismatch, never as a wrong answer.
package riblt

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"

	"github.com/factsync/factsync/events"
)

// PrefixSize is how many leading bytes of a FactID the symbols code.
// 160 bits keep an accidental collision among a billion facts below
// 2^-100, and finding two facts that collide on purpose costs about 2^80
// hashes (docs/antientropy.md, "Why prefixes").
const PrefixSize = 20

// SymbolSize is the length of one coded symbol on the wire: a prefix and
// a 32-bit checksum.
const SymbolSize = PrefixSize + 4

// Prefix is the first PrefixSize bytes of a FactID: what a symbol codes,
// and what a receiver learns of each fact in the difference.
type Prefix [PrefixSize]byte

// PrefixOf returns the prefix of id.
func PrefixOf(id events.FactID) Prefix { return Prefix(id[:PrefixSize]) }

// String returns p in lowercase hex, as fetches name it.
func (p Prefix) String() string { return hex.EncodeToString(p[:]) }

// ParsePrefix parses the lowercase hex form of a prefix.
func ParsePrefix(s string) (Prefix, error) {
	var p Prefix
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != PrefixSize {
		return p, events.Errorf(events.ReasonMalformed, "fact id prefix %q is not %d hex characters", s, 2*PrefixSize)
	}
	return Prefix(b), nil
}

// checksumDomain separates this checksum from every other use of SHA-256
// over a FactID or a part of one. v1 coded whole ids in 36-byte symbols;
// v2 codes prefixes, so a v1 checksum never passes for a v2 one.
const checksumDomain = "factsync/riblt/v2\x00"

// Checksum is the 64-bit checksum of a prefix. Its low 32 bits prove a
// symbol pure (it holds one prefix when its checksum is that prefix's);
// all 64 seed the prefix's mapping to symbols. It is over the prefix, not
// the whole id, because a receiver that peels a symbol knows only the
// prefix.
func Checksum(p *Prefix) uint64 {
	var buf [len(checksumDomain) + PrefixSize]byte
	copy(buf[:], checksumDomain)
	copy(buf[len(checksumDomain):], p[:])
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

// cell is one coded symbol: the XOR of its prefixes and the sum of their
// checksums' low 32 bits, each added with the sign of the side that holds
// it.
type cell struct {
	sum      Prefix
	checksum uint32
}

func (c *cell) apply(p *Prefix, checksum uint64, sign int) {
	for i := range c.sum {
		c.sum[i] ^= p[i]
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

func (c *cell) empty() bool { return c.checksum == 0 && c.sum == Prefix{} }

// isPure reports whether the cell holds exactly one prefix, and with which
// sign.
func (c *cell) isPure() (sign int, ok bool) {
	if c.sum == (Prefix{}) {
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
	return cell{sum: Prefix(b[:PrefixSize]), checksum: binary.LittleEndian.Uint32(b[PrefixSize:])}
}
