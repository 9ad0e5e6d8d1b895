package negentropy

import "github.com/factsync/factsync/events"

// maxVarintLen is the longest varint that fits a uint64: ten groups of 7
// bits.
const maxVarintLen = 10

// appendVarint appends n as a negentropy varint: base 128, most significant
// group first, the high bit set on every byte but the last.
func appendVarint(b []byte, n uint64) []byte {
	var tmp [maxVarintLen]byte
	i := len(tmp) - 1
	tmp[i] = byte(n & 0x7f)
	for n >>= 7; n != 0; n >>= 7 {
		i--
		tmp[i] = byte(n&0x7f) | 0x80
	}
	return append(b, tmp[i:]...)
}

// reader consumes a negentropy message.
type reader struct {
	buf []byte
}

func (r *reader) empty() bool { return len(r.buf) == 0 }

func (r *reader) varint() (uint64, error) {
	var n uint64
	for i := 0; ; i++ {
		if len(r.buf) == 0 {
			return 0, errTruncated
		}
		if i == maxVarintLen || n>>57 != 0 {
			return 0, events.Errorf(events.ReasonMalformed, "negentropy varint overflows 64 bits")
		}
		c := r.buf[0]
		r.buf = r.buf[1:]
		n = n<<7 | uint64(c&0x7f)
		if c&0x80 == 0 {
			return n, nil
		}
	}
}

func (r *reader) bytes(n int) ([]byte, error) {
	if len(r.buf) < n {
		return nil, errTruncated
	}
	b := r.buf[:n]
	r.buf = r.buf[n:]
	return b, nil
}

var errTruncated = events.Errorf(events.ReasonMalformed, "negentropy message ends prematurely")
