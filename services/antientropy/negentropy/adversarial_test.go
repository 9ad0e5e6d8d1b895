package negentropy

import (
	"encoding/binary"
	"math"
	"slices"
	"testing"

	"github.com/factsync/factsync/events"
)

// TestAdversarialIDsStayLogarithmic builds sets whose ids an attacker
// chose: every item has the same timestamp and the ids share a 28-byte
// prefix, so every bound needs a long prefix, and the differences are
// spread one to each top-level range, so every range differs at every
// level. Bloom-filter sync can be stalled by ids crafted to collide;
// range-based reconciliation splits ranges by item count, not by id value,
// so the round trips still grow as log16(n).
func TestAdversarialIDsStayLogarithmic(t *testing.T) {
	var prefix [28]byte
	for i := range prefix {
		prefix[i] = 0xab
	}
	adversarial := func(i uint32) Item {
		it := Item{Timestamp: 1_700_000_000}
		copy(it.ID[:], prefix[:])
		binary.BigEndian.PutUint32(it.ID[28:], i)
		return it
	}
	prev := 0
	for _, n := range []int{1 << 8, 1 << 12, 1 << 16} {
		const d = 32
		var a, b Index
		var onlyA, onlyB []events.FactID
		for i := range n {
			it := adversarial(uint32(i))
			switch {
			case i%(n/d) == 0 && (i/(n/d))%2 == 0:
				a.Insert(it)
				onlyA = append(onlyA, it.ID)
			case i%(n/d) == 0:
				b.Insert(it)
				onlyB = append(onlyB, it.ID)
			default:
				a.Insert(it)
				b.Insert(it)
			}
		}
		var have, need []events.FactID
		var rounds int
		a.View(func(sa Storage) {
			b.View(func(sb Storage) { have, need, rounds = reconcile(t, sa, sb, 0) })
		})
		if !slices.Equal(sortedIDs(have), sortedIDs(onlyA)) || !slices.Equal(sortedIDs(need), sortedIDs(onlyB)) {
			t.Fatalf("n=%d: have %d/%d need %d/%d", n, len(have), len(onlyA), len(need), len(onlyB))
		}
		// Each message narrows a range 16-fold; the last two carry ids.
		levels := math.Ceil(math.Log(float64(n)/(2*buckets))/math.Log(buckets)) + 1
		bound := int(math.Ceil(levels/2)) + 1
		t.Logf("n=%d: %d round trips (bound %d)", n, rounds, bound)
		if rounds > bound {
			t.Errorf("n=%d: %d round trips, want at most %d = O(log16 n)", n, rounds, bound)
		}
		if rounds < prev {
			t.Errorf("n=%d: fewer round trips (%d) than a smaller set (%d)", n, rounds, prev)
		}
		prev = rounds
	}
}
