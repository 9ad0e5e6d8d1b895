// Package binread decodes the length-prefixed binary encodings of fold
// states and snapshot contents. A Reader records the first error and then
// returns zero values, so a decoder reads a whole structure and checks Err
// once, and a corrupt length can never make it loop or allocate without
// limit: every length and count is bounded by the bytes left.
package binread

import (
	"encoding/binary"

	"github.com/factsync/factsync/events"
)

// Reader reads from a byte slice. Its errors are events.ReasonMalformed,
// prefixed with what it decodes.
type Reader struct {
	b    []byte
	what string
	err  error
}

// New returns a Reader of b; what names the encoding in errors ("fold
// state").
func New(b []byte, what string) *Reader { return &Reader{b: b, what: what} }

// Err returns the first error, or nil.
func (r *Reader) Err() error { return r.err }

// Len returns how many bytes are left.
func (r *Reader) Len() int { return len(r.b) }

// Fail records a decoding error unless one is recorded already, and
// returns the first.
func (r *Reader) Fail(format string, args ...any) error {
	if r.err == nil {
		r.err = events.Errorf(events.ReasonMalformed, r.what+": "+format, args...)
	}
	return r.err
}

// Next returns the next n bytes, capped so appending to them cannot
// overwrite what follows.
func (r *Reader) Next(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b) {
		_ = r.Fail("truncated")
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

// Uvarint reads an unsigned varint in its shortest form.
func (r *Reader) Uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		_ = r.Fail("bad length")
		return 0
	}
	// Encodings are canonical (equal states, equal bytes, equal digests),
	// so a varint padded with continuation bytes is refused.
	if n != len(binary.AppendUvarint(nil, v)) {
		_ = r.Fail("non-minimal length")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Count reads an element count, no more than the bytes left.
func (r *Reader) Count() int {
	n := r.Uvarint()
	if n > uint64(len(r.b)) {
		_ = r.Fail("count %d exceeds the data", n)
		return 0
	}
	return int(n)
}

// Bytes reads a length-prefixed byte string.
func (r *Reader) Bytes() []byte {
	n := r.Uvarint()
	if n > uint64(len(r.b)) {
		_ = r.Fail("truncated")
		return nil
	}
	return r.Next(int(n))
}

// Text reads a length-prefixed string.
func (r *Reader) Text() string { return string(r.Bytes()) }

// Finish fails if bytes are left over, and returns Err.
func (r *Reader) Finish() error {
	if r.err == nil && len(r.b) != 0 {
		_ = r.Fail("%d trailing bytes", len(r.b))
	}
	return r.err
}
