package negentropy

// From is the part of s at or after lo, as a Storage of its own. Two peers
// that reconcile From(s, lo) on both sides leave the items before lo alone:
// a peer restored from a snapshot, or one that pruned its history, has
// settled them otherwise.
func From(s Storage, lo Item) Storage {
	return from{s: s, lo: s.LowerBound(lo)}
}

type from struct {
	s  Storage
	lo int
}

func (a from) Len() int { return a.s.Len() - a.lo }

func (a from) LowerBound(x Item) int { return max(a.s.LowerBound(x), a.lo) - a.lo }

func (a from) Sum(lo, hi int) Accumulator { return a.s.Sum(lo+a.lo, hi+a.lo) }

func (a from) Iterate(lo, hi int, fn func(Item, int) bool) {
	a.s.Iterate(lo+a.lo, hi+a.lo, func(it Item, pos int) bool { return fn(it, pos-a.lo) })
}
