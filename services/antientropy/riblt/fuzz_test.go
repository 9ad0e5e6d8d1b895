package riblt

import (
	"testing"

	"github.com/factsync/factsync/events"
)

// fuzzSketch is the sketch of ids from..to, of size symbols.
func fuzzSketch(from, to uint64, size int) *Sketch {
	s := NewSketch(size)
	for i := from; i < to; i++ {
		s.Add(id(i))
	}
	return s
}

// FuzzAddSymbols feeds arbitrary symbols, in two calls, to a decoder: it
// never panics, refuses bad symbols with a reason (and keeps refusing),
// never takes more symbols than its sketch holds, and never reports a
// prefix twice or on both sides.
func FuzzAddSymbols(f *testing.F) {
	const size = 128
	sender := fuzzSketch(20, 90, size)
	for _, n := range []int{1, 8, 64, size} {
		wire, err := sender.AppendSymbols(nil, 0, n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire, uint16(n/2))
	}
	f.Add(make([]byte, SymbolSize-1), uint16(0))
	f.Add(make([]byte, (size+1)*SymbolSize), uint16(size))
	local := fuzzSketch(0, 60, size)
	f.Fuzz(func(t *testing.T, wire []byte, split uint16) {
		dec := NewDecoder(local)
		cut := min(int(split)*SymbolSize, len(wire))
		for _, part := range [][]byte{wire[:cut], wire[cut:]} {
			err := dec.AddSymbols(part)
			if err == nil {
				continue
			}
			if events.ReasonOf(err) == events.ReasonInternal {
				t.Fatalf("error without a stable reason: %v", err)
			}
			if len(part)%SymbolSize != 0 {
				continue // a misaligned frame is refused whole, before any of it is used
			}
			if dec.AddSymbols(nil) == nil {
				t.Fatalf("decoder forgot its error %v", err)
			}
			return
		}
		if dec.Received() > local.Size() {
			t.Fatalf("took %d symbols, the sketch holds %d", dec.Received(), local.Size())
		}
		seen := map[Prefix]bool{}
		for _, id := range append(append([]Prefix(nil), dec.Remote()...), dec.Local()...) {
			if seen[id] {
				t.Fatalf("reports %s twice", id)
			}
			seen[id] = true
		}
	})
}
