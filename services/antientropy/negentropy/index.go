package negentropy

import (
	"sort"
	"sync"
)

// Storage is the ordered set a reconciliation runs over. Positions are
// indexes into the set in item order. A Storage must not change while a
// session message is being processed.
type Storage interface {
	// Len returns the number of items.
	Len() int
	// LowerBound returns the position of the first item at or after x.
	LowerBound(x Item) int
	// Sum returns the sum of the ids at positions [from, to).
	Sum(from, to int) Accumulator
	// Iterate calls fn on the items at positions [from, to) in order,
	// stopping early when fn returns false.
	Iterate(from, to int, fn func(it Item, pos int) bool)
}

// B-tree fan-out. Leaves hold up to maxLeafItems items; inner nodes up to
// maxChildren children. Each node keeps the count and id sum of its subtree,
// so the sum of any prefix, and hence any range, is O(log n) and an insert
// updates O(log n) sums.
const (
	maxLeafItems = 64
	maxChildren  = 32
)

// Index is an ordered set of items with incremental range sums: a counted
// B+tree whose nodes carry the sum of their subtree's ids. It implements
// Storage. Index is safe for concurrent use; a session holds a read view
// (see View) while it answers a message. The zero value is an empty index.
type Index struct {
	mu   sync.RWMutex
	root *node
}

type node struct {
	items    []Item  // leaves only, sorted
	children []*node // inner nodes only
	first    Item    // the smallest item of the subtree
	count    int
	sum      Accumulator
}

func (n *node) leaf() bool { return n.children == nil }

// Insert adds it, reporting false when it was already present.
func (x *Index) Insert(it Item) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.root == nil {
		x.root = &node{}
	}
	added, split := x.root.insert(it)
	if split != nil {
		old := x.root
		x.root = &node{children: []*node{old, split}}
		x.root.recompute()
	}
	return added
}

// Len returns the number of items.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.root == nil {
		return 0
	}
	return x.root.count
}

// View runs fn with the index locked against inserts, so that a session
// message sees one consistent set.
func (x *Index) View(fn func(Storage)) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	fn(view{x.root})
}

// Root returns the sum and count of the whole set; two sets with equal
// roots are, barring a hash collision, equal.
func (x *Index) Root() (Accumulator, int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.root == nil {
		return Accumulator{}, 0
	}
	return x.root.sum, x.root.count
}

// view is an Index's tree read without locking; Index.View holds the lock.
type view struct{ root *node }

func (v view) Len() int {
	if v.root == nil {
		return 0
	}
	return v.root.count
}

func (v view) LowerBound(x Item) int {
	pos := 0
	for n := v.root; n != nil; {
		if n.leaf() {
			return pos + sort.Search(len(n.items), func(i int) bool { return n.items[i].Compare(x) >= 0 })
		}
		// Descend into the last child that starts before x: every later
		// child starts at or after x.
		c := sort.Search(len(n.children), func(i int) bool { return n.children[i].first.Compare(x) >= 0 })
		c = max(c-1, 0)
		for _, ch := range n.children[:c] {
			pos += ch.count
		}
		n = n.children[c]
	}
	return pos
}

// prefixSum returns the sum of the first k ids.
func (v view) prefixSum(k int) Accumulator {
	var acc Accumulator
	for n := v.root; n != nil && k > 0; {
		if n.leaf() {
			for i := range n.items[:k] {
				acc.Add(&n.items[i].ID)
			}
			break
		}
		for _, ch := range n.children {
			if k < ch.count {
				n = ch
				break
			}
			acc.AddSum(&ch.sum)
			k -= ch.count
		}
	}
	return acc
}

func (v view) Sum(from, to int) Accumulator {
	if from >= to {
		return Accumulator{}
	}
	if from == 0 && v.root != nil && to == v.root.count {
		return v.root.sum
	}
	acc := v.prefixSum(to)
	lo := v.prefixSum(from)
	acc.SubSum(&lo)
	return acc
}

func (v view) Iterate(from, to int, fn func(Item, int) bool) {
	if v.root != nil && from < to {
		v.root.iterate(from, to, 0, fn)
	}
}

// iterate visits positions [from, to) of the subtree whose first item is at
// position base, and reports whether to go on.
func (n *node) iterate(from, to, base int, fn func(Item, int) bool) bool {
	if n.leaf() {
		for i := max(from-base, 0); i < len(n.items) && base+i < to; i++ {
			if !fn(n.items[i], base+i) {
				return false
			}
		}
		return true
	}
	for _, ch := range n.children {
		if base >= to {
			return true
		}
		if base+ch.count > from && !ch.iterate(from, to, base, fn) {
			return false
		}
		base += ch.count
	}
	return true
}

// insert adds it to the subtree and returns a new right sibling when the
// node had to split.
func (n *node) insert(it Item) (added bool, split *node) {
	if n.leaf() {
		i := sort.Search(len(n.items), func(i int) bool { return n.items[i].Compare(it) >= 0 })
		if i < len(n.items) && n.items[i] == it {
			return false, nil
		}
		n.items = append(n.items, Item{})
		copy(n.items[i+1:], n.items[i:])
		n.items[i] = it
		n.first = n.items[0]
		n.count++
		n.sum.Add(&it.ID)
		if len(n.items) > maxLeafItems {
			half := len(n.items) / 2
			right := &node{items: append(make([]Item, 0, maxLeafItems+1), n.items[half:]...)}
			n.items = n.items[:half]
			right.recompute()
			n.recompute()
			return true, right
		}
		return true, nil
	}
	c := sort.Search(len(n.children), func(i int) bool { return n.children[i].first.Compare(it) > 0 })
	c = max(c-1, 0)
	added, childSplit := n.children[c].insert(it)
	if !added {
		return false, nil
	}
	n.count++
	n.sum.Add(&it.ID)
	n.first = n.children[0].first
	if childSplit == nil {
		return true, nil
	}
	n.children = append(n.children, nil)
	copy(n.children[c+2:], n.children[c+1:])
	n.children[c+1] = childSplit
	if len(n.children) > maxChildren {
		half := len(n.children) / 2
		right := &node{children: append([]*node(nil), n.children[half:]...)}
		n.children = n.children[:half:half]
		right.recompute()
		n.recompute()
		return true, right
	}
	return true, nil
}

// recompute rebuilds a node's count, sum and first item from its direct
// contents, after a split.
func (n *node) recompute() {
	n.count, n.sum = 0, Accumulator{}
	if n.leaf() {
		for i := range n.items {
			n.sum.Add(&n.items[i].ID)
		}
		n.count = len(n.items)
		if n.count > 0 {
			n.first = n.items[0]
		}
		return
	}
	for _, ch := range n.children {
		n.sum.AddSum(&ch.sum)
		n.count += ch.count
	}
	n.first = n.children[0].first
}

// Clone returns an independent copy of the index.
func (x *Index) Clone() *Index {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return &Index{root: x.root.clone()}
}

func (n *node) clone() *node {
	if n == nil {
		return nil
	}
	c := *n
	if n.leaf() {
		c.items = append(make([]Item, 0, maxLeafItems+1), n.items...)
		return &c
	}
	c.children = make([]*node, len(n.children), maxChildren+1)
	for i, ch := range n.children {
		c.children[i] = ch.clone()
	}
	return &c
}
