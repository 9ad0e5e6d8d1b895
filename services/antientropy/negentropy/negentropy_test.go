package negentropy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"sort"
	"testing"

	"github.com/factsync/factsync/events"
	"pgregory.net/rapid"
)

// vector is the obvious Storage, a sorted slice with sums recomputed per
// call, against which the Index is checked.
type vector []Item

func newVector(items []Item) vector {
	v := slices.Clone(items)
	slices.SortFunc(v, Item.Compare)
	return slices.CompactFunc(v, func(a, b Item) bool { return a == b })
}

func (v vector) Len() int { return len(v) }
func (v vector) LowerBound(x Item) int {
	return sort.Search(len(v), func(i int) bool { return v[i].Compare(x) >= 0 })
}
func (v vector) Sum(from, to int) Accumulator {
	var a Accumulator
	for i := from; i < to; i++ {
		a.Add(&v[i].ID)
	}
	return a
}
func (v vector) Iterate(from, to int, fn func(Item, int) bool) {
	for i := from; i < to; i++ {
		if !fn(v[i], i) {
			return
		}
	}
}

func TestVarint(t *testing.T) {
	cases := map[uint64]string{0: "00", 1: "01", 127: "7f", 128: "8100", 300: "822c", 1<<32 - 1: "8fffffff7f"}
	for n, want := range cases {
		got := hex.EncodeToString(appendVarint(nil, n))
		if got != want {
			t.Errorf("varint(%d) = %s, want %s", n, got, want)
		}
		r := reader{buf: appendVarint(nil, n)}
		if back, err := r.varint(); err != nil || back != n || !r.empty() {
			t.Errorf("decode varint(%d) = %d, %v", n, back, err)
		}
	}
	r := reader{buf: bytes.Repeat([]byte{0xff}, 11)}
	if _, err := r.varint(); !events.IsReason(err, events.ReasonMalformed) {
		t.Errorf("overlong varint: err = %v, want malformed", err)
	}
}

// TestFingerprintVector pins the fingerprint against a value computed with
// nostr-tools' nip77 Accumulator, including a carry across every word.
func TestFingerprintVector(t *testing.T) {
	var a, b events.FactID
	for i := range a {
		a[i] = 0xff
	}
	b[0] = 1
	b[31] = 0x10
	var acc Accumulator
	acc.Add(&a)
	acc.Add(&b)
	fp := acc.Fingerprint(2)
	if got, want := hex.EncodeToString(fp[:]), "d3b5815ccfaed24939a10ce92746002c"; got != want {
		t.Fatalf("fingerprint = %s, want %s", got, want)
	}
}

func id(seed uint64) events.FactID {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seed)
	return sha256.Sum256(b[:])
}

func TestIndexMatchesVector(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var x Index
		var items []Item
		n := rapid.IntRange(0, 3000).Draw(t, "n")
		for i := range n {
			it := Item{Timestamp: rapid.Uint64Range(0, 50).Draw(t, "ts"), ID: id(uint64(i % 2500))}
			items = append(items, it)
			x.Insert(it)
		}
		v := newVector(items)
		if x.Len() != len(v) {
			t.Fatalf("len %d, want %d", x.Len(), len(v))
		}
		x.View(func(s Storage) {
			var got []Item
			s.Iterate(0, s.Len(), func(it Item, pos int) bool {
				if pos != len(got) {
					t.Fatalf("iterate position %d, want %d", pos, len(got))
				}
				got = append(got, it)
				return true
			})
			if !slices.Equal(got, []Item(v)) {
				t.Fatalf("iteration order differs from the sorted set")
			}
			for range 20 {
				from := rapid.IntRange(0, len(v)).Draw(t, "from")
				to := rapid.IntRange(from, len(v)).Draw(t, "to")
				if s.Sum(from, to) != v.Sum(from, to) {
					t.Fatalf("sum [%d,%d) differs", from, to)
				}
				var sub []Item
				s.Iterate(from, to, func(it Item, _ int) bool { sub = append(sub, it); return true })
				if !slices.Equal(sub, []Item(v[from:to])) {
					t.Fatalf("iterate [%d,%d) differs", from, to)
				}
				probe := Item{Timestamp: rapid.Uint64Range(0, 51).Draw(t, "pts"), ID: id(rapid.Uint64Range(0, 2600).Draw(t, "pid"))}
				if s.LowerBound(probe) != v.LowerBound(probe) {
					t.Fatalf("lower bound of %v: %d, want %d", probe, s.LowerBound(probe), v.LowerBound(probe))
				}
			}
		})
	})
}

// reconcile runs a whole session between two storages in memory and
// returns what the initiator learnt and how many round trips it took.
// fataler is what reconcile needs of *testing.T and *rapid.T.
type fataler interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

func reconcile(t fataler, a, b Storage, frameLimit int) (have, need []events.FactID, rounds int) {
	t.Helper()
	have, need, sent := reconcileRecorded(t, a, b, frameLimit)
	return have, need, len(sent)
}

// reconcileRecorded is reconcile that also returns the initiator's messages.
func reconcileRecorded(t fataler, a, b Storage, frameLimit int) (have, need []events.FactID, sent [][]byte) {
	t.Helper()
	in, err := NewInitiator(a, frameLimit)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := NewResponder(b, frameLimit)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := in.Initiate()
	if err != nil {
		t.Fatal(err)
	}
	reported := map[events.FactID]int{}
	for msg != nil {
		sent = append(sent, msg)
		if frameLimit != 0 && len(msg) > frameLimit {
			t.Fatalf("initiator message of %d bytes exceeds frame limit %d", len(msg), frameLimit)
		}
		reply, err := resp.Reconcile(msg)
		if err != nil {
			t.Fatal(err)
		}
		if frameLimit != 0 && len(reply) > frameLimit {
			t.Fatalf("responder message of %d bytes exceeds frame limit %d", len(reply), frameLimit)
		}
		if len(sent) > 1000 {
			t.Fatal("reconciliation does not converge")
		}
		var h, n []events.FactID
		msg, h, n, err = in.Reconcile(reply)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range append(slices.Clone(h), n...) {
			if r, dup := reported[x]; dup {
				t.Fatalf("id %x reported in round %d and again in round %d (message %x)", x[:4], r, len(sent), reply)
			}
			reported[x] = len(sent)
		}
		have, need = append(have, h...), append(need, n...)
	}
	return have, need, sent
}

func sortedIDs(ids []events.FactID) []events.FactID {
	ids = slices.Clone(ids)
	slices.SortFunc(ids, events.FactID.Compare)
	return ids
}

func TestReconcileFindsSymmetricDifference(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var a, b Index
		var onlyA, onlyB []events.FactID
		maxTS := rapid.Uint64Range(0, 1<<32-1).Draw(t, "maxTS")
		n := rapid.IntRange(0, 4000).Draw(t, "n")
		for i := range n {
			it := Item{Timestamp: rapid.Uint64Range(0, maxTS).Draw(t, "ts"), ID: id(uint64(i))}
			switch rapid.IntRange(0, 9).Draw(t, "where") {
			case 0:
				if a.Insert(it) {
					onlyA = append(onlyA, it.ID)
				}
			case 1:
				if b.Insert(it) {
					onlyB = append(onlyB, it.ID)
				}
			default:
				a.Insert(it)
				b.Insert(it)
			}
		}
		frameLimit := rapid.SampledFrom([]int{0, MinFrameSizeLimit, 10_000}).Draw(t, "frame")
		var have, need []events.FactID
		a.View(func(sa Storage) {
			b.View(func(sb Storage) {
				have, need, _ = reconcile(t, sa, sb, frameLimit)
			})
		})
		if !slices.Equal(sortedIDs(have), sortedIDs(onlyA)) {
			dups := len(have) - len(slices.Compact(sortedIDs(have)))
			t.Fatalf("have %d ids (%d repeated), want the %d only the initiator holds", len(have), dups, len(onlyA))
		}
		if !slices.Equal(sortedIDs(need), sortedIDs(onlyB)) {
			t.Fatalf("need %d ids, want the %d only the responder holds", len(need), len(onlyB))
		}
	})
}

func TestIdenticalSetsTakeOneRound(t *testing.T) {
	var a Index
	for i := range 10_000 {
		a.Insert(Item{Timestamp: uint64(i / 3), ID: id(uint64(i))})
	}
	var have, need []events.FactID
	var rounds int
	a.View(func(s Storage) { have, need, rounds = reconcile(t, s, s, 0) })
	if len(have)+len(need) != 0 || rounds != 1 {
		t.Fatalf("identical sets: have %d, need %d, rounds %d; want 0, 0, 1", len(have), len(need), rounds)
	}
}

func TestResponderRejectsGarbage(t *testing.T) {
	resp, _ := NewResponder(vector(nil), 0)
	for name, msg := range map[string][]byte{
		"empty":        {},
		"bad version":  {0x12},
		"truncated":    {ProtocolVersion, 0x01},
		"long prefix":  {ProtocolVersion, 0x00, 33},
		"unknown mode": {ProtocolVersion, 0x00, 0x00, 0x07},
		"short idlist": {ProtocolVersion, 0x00, 0x00, ModeIDList, 0x05, 0x01},
	} {
		if _, err := resp.Reconcile(msg); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("%s: err = %v, want malformed", name, err)
		}
	}
	reply, err := resp.Reconcile([]byte{0x62})
	if err != nil || !bytes.Equal(reply, []byte{ProtocolVersion}) {
		t.Errorf("future version: reply %x, %v; want just our version byte", reply, err)
	}
	if _, err := NewResponder(vector(nil), 100); !events.IsReason(err, events.ReasonMalformed) {
		t.Errorf("tiny frame limit accepted")
	}
}

func TestReconcileLargeUnderFrameLimit(t *testing.T) {
	var a, b Index
	var onlyA, onlyB []events.FactID
	for i := range 12_000 {
		it := Item{Timestamp: 1_700_000_000 + uint64(i/7), ID: id(uint64(i))}
		switch {
		case i%97 == 0:
			a.Insert(it)
			onlyA = append(onlyA, it.ID)
		case i%89 == 0:
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
		b.View(func(sb Storage) { have, need, rounds = reconcile(t, sa, sb, MinFrameSizeLimit) })
	})
	if !slices.Equal(sortedIDs(have), sortedIDs(onlyA)) || !slices.Equal(sortedIDs(need), sortedIDs(onlyB)) {
		t.Fatalf("have %d/%d, need %d/%d", len(have), len(onlyA), len(need), len(onlyB))
	}
	if rounds < 3 {
		t.Fatalf("%d differences fitted in %d rounds of 4 KB frames; the frame limit is not applied", len(onlyA)+len(onlyB), rounds)
	}
}

func TestCloneIsIndependent(t *testing.T) {
	var x Index
	for i := range 5000 {
		x.Insert(Item{Timestamp: uint64(i % 13), ID: id(uint64(i))})
	}
	sum, n := x.Root()
	c := x.Clone()
	for i := 5000; i < 6000; i++ {
		c.Insert(Item{Timestamp: uint64(i % 13), ID: id(uint64(i))})
	}
	if s2, n2 := x.Root(); s2 != sum || n2 != n {
		t.Fatal("inserting into a clone changed the original")
	}
	var items []Item
	c.View(func(s Storage) {
		s.Iterate(0, s.Len(), func(it Item, _ int) bool { items = append(items, it); return true })
		if s.Sum(0, s.Len()) != newVector(items).Sum(0, len(items)) || len(items) != 6000 {
			t.Fatal("clone's sums do not match its items")
		}
	})
}
