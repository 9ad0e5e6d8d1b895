package events

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// HLC is a hybrid logical clock reading (Kulkarni et al., 2014): the
// greatest wall-clock millisecond seen, plus a logical counter that orders
// events within that millisecond. HLCs order facts across devices whose
// clocks disagree, while staying close to real time.
type HLC struct {
	WallMillis uint64
	Logical    uint32
}

// HLCSize is the length of HLC.Bytes.
const HLCSize = 12

// Compare returns -1, 0 or +1 as h is before, equal to, or after o.
func (h HLC) Compare(o HLC) int {
	switch {
	case h.WallMillis < o.WallMillis:
		return -1
	case h.WallMillis > o.WallMillis:
		return 1
	case h.Logical < o.Logical:
		return -1
	case h.Logical > o.Logical:
		return 1
	}
	return 0
}

// Time returns the wall-clock part as a time.Time.
func (h HLC) Time() time.Time { return time.UnixMilli(int64(h.WallMillis)).UTC() }

// Seconds returns the wall-clock part in whole seconds, capped to a u32.
// Negentropy implementations encode timestamps with 32-bit arithmetic, so
// reconciliation orders items by (Seconds, FactID); the full HLC stays in
// the fact. A u32 of seconds lasts until 2106.
func (h HLC) Seconds() uint32 {
	s := h.WallMillis / 1000
	if s > 0xFFFFFFFF {
		return 0xFFFFFFFF
	}
	return uint32(s)
}

// Bytes encodes h big-endian so that byte order equals HLC order.
func (h HLC) Bytes() [HLCSize]byte {
	var b [HLCSize]byte
	binary.BigEndian.PutUint64(b[:8], h.WallMillis)
	binary.BigEndian.PutUint32(b[8:], h.Logical)
	return b
}

// HLCFromBytes decodes HLC.Bytes.
func HLCFromBytes(b []byte) (HLC, error) {
	if len(b) != HLCSize {
		return HLC{}, Errorf(ReasonMalformed, "hlc is %d bytes, want %d", len(b), HLCSize)
	}
	return HLC{WallMillis: binary.BigEndian.Uint64(b[:8]), Logical: binary.BigEndian.Uint32(b[8:])}, nil
}

func (h HLC) String() string {
	return fmt.Sprintf("%s+%d", h.Time().Format("2006-01-02T15:04:05.000Z"), h.Logical)
}

// Clock hands out monotonic HLC readings for one device. It is safe for
// concurrent use. Devices persist the last reading (see Last) and pass it
// to NewClock on restart, so readings stay monotonic even if the wall clock
// steps back across a restart.
type Clock struct {
	mu   sync.Mutex
	now  func() time.Time
	last HLC
}

// NewClock returns a Clock reading wall time from now and never going below
// last.
func NewClock(now func() time.Time, last HLC) *Clock {
	return &Clock{now: now, last: last}
}

// Now returns a reading greater than every reading this clock has returned
// or observed.
func (c *Clock) Now() HLC {
	c.mu.Lock()
	defer c.mu.Unlock()
	wall := uint64(c.now().UnixMilli())
	if wall > c.last.WallMillis {
		c.last = HLC{WallMillis: wall}
	} else {
		c.last.Logical++
	}
	return c.last
}

// Observe moves the clock past a reading received from elsewhere, so the
// next local reading orders after it.
func (c *Clock) Observe(h HLC) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.Compare(c.last) > 0 {
		c.last = h
	}
}

// Last returns the greatest reading handed out or observed.
func (c *Clock) Last() HLC {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
