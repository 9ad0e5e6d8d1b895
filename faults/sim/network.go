package sim

import (
	"container/heap"
	"math/rand/v2"
)

// Faults are the network's misbehaviours, as probabilities per message
// and delays in ticks.
type Faults struct {
	Drop      float64 // a message is lost
	Duplicate float64 // a message is delivered twice
	MaxDelay  int     // each copy arrives 1..MaxDelay ticks after it is sent
}

// envelope is one message in flight.
type envelope struct {
	at       int    // tick it arrives
	seq      uint64 // send order, to break ties of at deterministically
	from, to int
	body     any
}

// inFlight orders envelopes by arrival tick, then send order. Random
// delays make arrival order differ from send order: that is the reorder.
type inFlight []*envelope

func (q inFlight) Len() int { return len(q) }
func (q inFlight) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q inFlight) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *inFlight) Push(x any)   { *q = append(*q, x.(*envelope)) }
func (q *inFlight) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// network carries messages between peers with faults. A partition gives
// each peer a side; a message whose ends are on different sides when it
// arrives is lost, so a partition also cuts what is already in flight.
type network struct {
	rng     *rand.Rand
	faults  Faults
	queue   inFlight
	seq     uint64
	side    []int // side[peer]; all zero when healed
	stats   *Stats
	maxSize int
}

func newNetwork(rng *rand.Rand, peers int, f Faults, stats *Stats) *network {
	return &network{rng: rng, faults: f, side: make([]int, peers), stats: stats}
}

// send queues body from one peer to another, applying drop, duplicate and
// delay.
func (n *network) send(now, from, to int, body any) {
	n.stats.Sent++
	if n.rng.Float64() < n.faults.Drop {
		n.stats.Dropped++
		return
	}
	copies := 1
	if n.rng.Float64() < n.faults.Duplicate {
		copies = 2
		n.stats.Duplicated++
	}
	for range copies {
		n.seq++
		heap.Push(&n.queue, &envelope{at: now + 1 + n.rng.IntN(max(n.faults.MaxDelay, 1)), seq: n.seq, from: from, to: to, body: body})
	}
	n.maxSize = max(n.maxSize, len(n.queue))
}

// deliver hands every envelope due by now to fn, in arrival order,
// dropping those that cross the partition.
func (n *network) deliver(now int, fn func(e *envelope)) {
	for len(n.queue) > 0 && n.queue[0].at <= now {
		e := heap.Pop(&n.queue).(*envelope)
		if n.side[e.from] != n.side[e.to] {
			n.stats.Partitioned++
			continue
		}
		fn(e)
	}
}

// partition puts every peer on a random side of two, making sure both
// sides are used.
func (n *network) partition() {
	split := false
	for i := range n.side {
		n.side[i] = n.rng.IntN(2)
		split = split || n.side[i] != n.side[0]
	}
	if !split {
		n.side[n.rng.IntN(len(n.side))] ^= 1
	}
	n.stats.Partitions++
}

// heal puts every peer back on one side.
func (n *network) heal() {
	clear(n.side)
}

// healed reports whether no partition is in force.
func (n *network) healed() bool {
	for _, s := range n.side {
		if s != 0 {
			return false
		}
	}
	return true
}
