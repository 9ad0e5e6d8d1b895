package events_test

import (
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"pgregory.net/rapid"
)

// Byte order equals HLC order, and bytes round-trip.
func TestHLCBytesOrder(t *testing.T) {
	gen := rapid.Custom(func(t *rapid.T) events.HLC {
		return events.HLC{WallMillis: rapid.Uint64().Draw(t, "wall"), Logical: rapid.Uint32().Draw(t, "logical")}
	})
	rapid.Check(t, func(t *rapid.T) {
		a, b := gen.Draw(t, "a"), gen.Draw(t, "b")
		ab, bb := a.Bytes(), b.Bytes()
		if got := compareBytes(ab[:], bb[:]); got != a.Compare(b) {
			t.Fatalf("byte order %d != hlc order %d for %v, %v", got, a.Compare(b), a, b)
		}
		back, err := events.HLCFromBytes(ab[:])
		if err != nil || back != a {
			t.Fatalf("round trip: %v %v", back, err)
		}
	})
}

func compareBytes(a, b []byte) int {
	for i := range a {
		switch {
		case a[i] < b[i]:
			return -1
		case a[i] > b[i]:
			return 1
		}
	}
	return 0
}

// The clock never goes backwards, whatever the wall clock does, and orders
// after readings it observed.
func TestClockMonotonic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		wall := time.UnixMilli(1_700_000_000_000)
		c := events.NewClock(func() time.Time { return wall }, events.HLC{})
		prev := c.Now()
		for range rapid.IntRange(1, 50).Draw(t, "steps") {
			switch rapid.IntRange(0, 2).Draw(t, "action") {
			case 0:
				wall = wall.Add(time.Duration(rapid.IntRange(-5000, 5000).Draw(t, "step")) * time.Millisecond)
			case 1:
				c.Observe(events.HLC{WallMillis: uint64(wall.UnixMilli()) + rapid.Uint64Range(0, 10000).Draw(t, "ahead")})
			}
			now := c.Now()
			if now.Compare(prev) <= 0 || now.Compare(c.Last()) != 0 {
				t.Fatalf("clock went from %v to %v", prev, now)
			}
			prev = now
		}
	})
}

func TestClockResumesAfterRestart(t *testing.T) {
	last := events.HLC{WallMillis: 2_000_000_000_000, Logical: 7}
	c := events.NewClock(func() time.Time { return time.UnixMilli(1_000) }, last)
	if got := c.Now(); got.Compare(last) <= 0 {
		t.Fatalf("after restart with the wall clock behind, got %v, want after %v", got, last)
	}
}

func FuzzHLCFromBytes(f *testing.F) {
	f.Add(make([]byte, events.HLCSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := events.HLCFromBytes(b)
		if err != nil {
			return
		}
		if got := h.Bytes(); string(got[:]) != string(b) {
			t.Fatalf("re-encoding changed bytes")
		}
	})
}
