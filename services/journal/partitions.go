package journal

import (
	"errors"
	"fmt"
	"github.com/factsync/factsync/shared/atomicfile"
	"hash/fnv"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
)

// DefaultPartitions is how many partitions the authorities are spread
// over. Every replica must use the same number; changing it means every
// replica folds JOURNAL again from the start.
const DefaultPartitions = 16

// PartitionOf returns the partition of an authority among n: FNV-1a (32
// bit) of the AuthorityID, modulo n. It is the function nats-server's
// subject mapping {{partition(n,1)}} applies to the authority token of
// fs.journal.<auth>.<coll>, so an operator can route by the same
// partitions at the server.
func PartitionOf(auth events.AuthorityID, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(auth))
	return int(h.Sum32() % uint32(n))
}

// partition is one partition as this replica holds it: its fold, where
// that fold is in JOURNAL, and what the replica does with it.
type partition struct {
	num   int
	state *replica
	dir   string // its checkpoint directory

	ckMu  sync.Mutex // serialises checkpoints of this partition
	saved uint64     // position of its last checkpoint; under ckMu

	// Under partitions.mu:
	attached bool          // the reader's current run started at or before its position
	target   uint64        // the last JOURNAL fact when it was activated
	warm     bool          // it has folded up to target: its answers are current
	serving  bool          // this replica owns it (or is handing it over): it answers and announces
	lag      time.Duration // store-to-fold delay of the last fact it folded
}

// partitions are the partitions this replica folds: those it owns, those
// it is handing over, and those it warms up to take over.
type partitions struct {
	n       int
	indexed map[string][]string
	root    string // DataDir

	mu     sync.RWMutex
	active map[int]*partition

	// rewind is signalled when a partition is activated: the reader must
	// start again from the lowest position so the new partition sees every
	// fact after its checkpoint. warmed is signalled when a partition has
	// caught up, so the lease round that claims it runs at once.
	rewind chan struct{}
	warmed chan struct{}
}

func newPartitions(n int, indexed map[string][]string, root string) *partitions {
	return &partitions{
		n: n, indexed: indexed, root: root,
		active: map[int]*partition{},
		rewind: make(chan struct{}, 1),
		warmed: make(chan struct{}, 1),
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// checkpointDir keeps each partition's checkpoint apart, named with the
// partition count so a replica started with another count never resumes
// from a checkpoint that holds other authorities.
func (ps *partitions) checkpointDir(p int) string {
	return filepath.Join(ps.root, "partitions", fmt.Sprintf("%d-of-%d", p, ps.n))
}

// get returns the active partition p, or nil.
func (ps *partitions) get(p int) *partition {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return ps.active[p]
}

// add makes p active with the state resume gives it, to be warmed from
// there up to target. The reader rewinds to cover it.
func (ps *partitions) add(p int, state *replica, saved, target uint64) *partition {
	part := &partition{num: p, state: state, dir: ps.checkpointDir(p), saved: saved, target: target}
	ps.mu.Lock()
	part.warm = state.position() >= target
	ps.active[p] = part
	ps.mu.Unlock()
	signal(ps.rewind)
	if part.warm {
		signal(ps.warmed)
	}
	return part
}

// remove drops p; its checkpoint stays for a later return.
func (ps *partitions) remove(p int) *partition {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	part := ps.active[p]
	delete(ps.active, p)
	return part
}

// attachAll starts a reader run: every active partition is covered from
// the lowest position on. ok is false when there is nothing to fold.
func (ps *partitions) attachAll() (start uint64, ok bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, part := range ps.active {
		part.attached = true
		if pos := part.state.position(); !ok || pos+1 < start {
			start, ok = pos+1, true
		}
	}
	return start, ok
}

// attached lists the partitions the current reader run covers.
func (ps *partitions) attached() []*partition {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	out := make([]*partition, 0, len(ps.active))
	for _, part := range ps.active {
		if part.attached {
			out = append(out, part)
		}
	}
	return out
}

// folded records, after a batch, which attached partitions have caught up
// (atEnd: the reader has nothing more) and their fold lag.
func (ps *partitions) folded(parts []*partition, atEnd bool, lag time.Duration) {
	ps.mu.Lock()
	newlyWarm := false
	for _, part := range parts {
		part.lag = lag
		if !part.warm && (atEnd || part.state.position() >= part.target) {
			part.warm, newlyWarm = true, true
		}
	}
	ps.mu.Unlock()
	if newlyWarm {
		signal(ps.warmed)
	}
}

// serving returns the partition that answers for auth here, or nil when
// another replica does.
func (ps *partitions) serving(auth events.AuthorityID) *partition {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	if part := ps.active[PartitionOf(auth, ps.n)]; part != nil && part.serving {
		return part
	}
	return nil
}

// setServing starts or stops answering for p. A partition is served only
// once warm.
func (ps *partitions) setServing(p int, on bool) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	part := ps.active[p]
	if part == nil || on && !part.warm {
		return false
	}
	part.serving = on
	return true
}

// status is a snapshot of one active partition for the lease round.
type status struct {
	num           int
	warm, serving bool
}

// statuses lists the active partitions in order.
func (ps *partitions) statuses() []status {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	out := make([]status, 0, len(ps.active))
	for _, part := range ps.active {
		out = append(out, status{num: part.num, warm: part.warm, serving: part.serving})
	}
	slices.SortFunc(out, func(a, b status) int { return a.num - b.num })
	return out
}

// all lists the active partitions.
func (ps *partitions) all() []*partition {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	out := make([]*partition, 0, len(ps.active))
	for _, part := range ps.active {
		out = append(out, part)
	}
	return out
}

// checkpoint writes part's state if it moved since its last checkpoint.
func (part *partition) checkpoint(streamCreated int64) error {
	part.ckMu.Lock()
	defer part.ckMu.Unlock()
	if part.state.position() == part.saved {
		return nil
	}
	seq, data, err := part.state.encode(streamCreated)
	if err != nil {
		return fmt.Errorf("journal: encode checkpoint of partition %d: %w", part.num, err)
	}
	if err := atomicfile.Write(filepath.Join(part.dir, checkpointFile), data); err != nil {
		return fmt.Errorf("journal: write checkpoint of partition %d: %w", part.num, err)
	}
	part.saved = seq
	return nil
}

// errWrongPartitionCount is a replica configured with another partition
// count than the replicas already running.
var errWrongPartitionCount = errors.New("partition count differs between journal replicas")
