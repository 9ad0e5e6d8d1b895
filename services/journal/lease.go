package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/lease"
	"github.com/nats-io/nats.go/jetstream"
)

// Partition ownership lives in the KV bucket LeaseBucket, whose entries
// expire LeaseTTL after they were last written:
//
//	member.<replica>  {"partitions": n, "warm": [...]}  a live replica, and the
//	                  partitions it has warmed up to take over
//	owner.<p>         shared/lease state of <replica>   who answers for partition p
//
// Every LeaseTTL/4 each replica runs a round: it renews its member entry,
// lists the live members, and gives partition p to the member at index
// p mod len(members) of their sorted ids (the desired owner), so every
// replica computes the same balanced assignment. Per partition:
//
//   - The desired owner activates it (folds it from its own checkpoint)
//     until it is warm, announces that in its member entry, and claims
//     owner.<p> with a create once no one holds it.
//   - An owner that is no longer desired hands over: once the desired
//     owner says it is warm, it rewrites owner.<p> to the new owner with a
//     revision-checked update, keeps answering for handoverRounds rounds
//     so that no request finds no one, then drops the partition.
//   - An owner renews owner.<p> with a revision-checked update. If that
//     fails someone else took it (after the lease expired), so it stops.
//
// The owner keys are shared/lease leases (with the bucket's TTL on top,
// so a dead owner's key disappears). The revision is the fencing token:
// a replica paused past its lease
// cannot renew and so stops answering. A replica that dies stops
// renewing; its entries expire, the others see one member less, and the
// new desired owners warm and claim its partitions. Nothing is folded
// twice into one state (each partition state skips JOURNAL sequences at
// or below its position) and nothing is skipped (a partition is read from
// its own position on).
const (
	// LeaseBucket is the KV bucket of journal partition leases.
	LeaseBucket = "journal_partitions"
	// DefaultLeaseTTL is how long a dead replica's partitions stay
	// unanswered before the others take them over.
	DefaultLeaseTTL = 10 * time.Second

	handoverRounds = 2
	memberPrefix   = "member."
	ownerPrefix    = "owner."
)

// member is a member entry.
type member struct {
	Partitions int   `json:"partitions"`
	Warm       []int `json:"warm,omitempty"`
}

// leases runs the rounds of one replica.
type leases struct {
	r      *run
	kv     jetstream.KeyValue
	owners *lease.Keeper // this replica's hold on owner.<p> keys
	id     string

	handingOver map[int]int // partition -> rounds it is still answered here
	revisions   map[int]uint64
	claimedAll  bool
}

func ownerKey(p int) string { return ownerPrefix + strconv.Itoa(p) }

// loop runs rounds until ctx ends. ready is called after the first round in which
// every partition has an owner.
func (l *leases) loop(ctx context.Context, ready func()) error {
	l.owners = lease.NewKeeper(l.kv, l.id, l.r.cfg.LeaseTTL, l.r.env.Clock)
	ticker := l.r.env.Clock.NewTicker(l.r.cfg.LeaseTTL / 4)
	defer ticker.Stop()
	for {
		if err := l.round(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, errWrongPartitionCount) {
				return err
			}
			l.r.logger().Warn("journal: partition lease round failed; retrying", "err", err)
		} else if l.claimedAll && ready != nil {
			ready()
			ready = nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		case <-l.r.parts.warmed:
		}
	}
}

// round renews this replica's membership and moves partitions towards
// the assignment for the current members.
func (l *leases) round(ctx context.Context) error {
	ps := l.r.parts
	mine := member{Partitions: ps.n}
	for _, st := range ps.statuses() {
		if st.warm && !st.serving {
			mine.Warm = append(mine.Warm, st.num)
		}
	}
	body, _ := json.Marshal(mine)
	if _, err := l.kv.Put(ctx, memberPrefix+l.id, body); err != nil {
		return fmt.Errorf("renew membership: %w", err)
	}
	members, err := l.members(ctx)
	if err != nil {
		return err
	}
	ids := slices.Sorted(func(yield func(string) bool) {
		for id := range members {
			if !yield(id) {
				return
			}
		}
	})
	claimed := 0
	for p := range ps.n {
		desired := ids[p%len(ids)]
		owner, rev, err := l.owner(ctx, p)
		if err != nil {
			return err
		}
		if err := l.step(ctx, p, desired, owner, rev, members); err != nil {
			return err
		}
		if owner != "" || ps.get(p) != nil && ps.get(p).serving {
			claimed++
		}
	}
	l.claimedAll = claimed == ps.n
	return nil
}

// members reads the live member entries, this replica's included.
func (l *leases) members(ctx context.Context) (map[string]member, error) {
	lister, err := l.kv.ListKeysFiltered(ctx, memberPrefix+">")
	if err != nil {
		return nil, fmt.Errorf("list journal replicas: %w", err)
	}
	out := map[string]member{}
	for key := range lister.Keys() {
		e, err := l.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired since listed
		}
		if err != nil {
			return nil, fmt.Errorf("read journal replica %s: %w", key, err)
		}
		var m member
		if err := json.Unmarshal(e.Value(), &m); err != nil {
			continue
		}
		id := strings.TrimPrefix(key, memberPrefix)
		if m.Partitions != l.r.parts.n {
			return nil, events.Wrap(events.ReasonConflict, errWrongPartitionCount, fmt.Sprintf(
				"journal replica %s uses %d partitions, this one %d; run every replica with the same count", id, m.Partitions, l.r.parts.n))
		}
		out[id] = m
	}
	out[l.id] = member{Partitions: l.r.parts.n} // listed or not yet
	return out, nil
}

// owner reads owner.<p>: "" when no one holds it.
func (l *leases) owner(ctx context.Context, p int) (string, uint64, error) {
	st, err := l.owners.Read(ctx, ownerKey(p))
	if err != nil {
		return "", 0, fmt.Errorf("read owner of partition %d: %w", p, err)
	}
	return st.Holder, st.Revision, nil
}

// held is this replica's lease on owner.<p> at revision rev.
func held(p int, rev uint64) lease.Lease { return lease.Lease{Key: ownerKey(p), Token: rev} }

// step moves partition p one step towards its desired owner.
func (l *leases) step(ctx context.Context, p int, desired, owner string, rev uint64, members map[string]member) error {
	ps := l.r.parts
	if left, ok := l.handingOver[p]; ok {
		// Answer a little longer, until the new owner surely does.
		if left <= 1 {
			delete(l.handingOver, p)
			return l.r.deactivate(p)
		}
		l.handingOver[p] = left - 1
		return nil
	}
	switch {
	case owner == l.id:
		part := ps.get(p)
		if part == nil {
			// Handed to this replica without it being warm (it restarted
			// under the same id): warm it first, keep the lease meanwhile.
			var err error
			if part, err = l.r.activate(ctx, p); err != nil {
				return err
			}
		}
		if desired != l.id && slices.Contains(members[desired].Warm, p) {
			if err := l.owners.Transfer(ctx, held(p, rev), desired); err == nil {
				l.handingOver[p] = handoverRounds
				delete(l.revisions, p)
				l.r.logger().Info("journal: handing partition over", "partition", p, "to", desired)
				return nil
			}
		}
		renewed := held(p, rev)
		if err := l.owners.Renew(ctx, &renewed); err != nil {
			l.r.logger().Warn("journal: lost partition lease", "partition", p, "err", err)
			delete(l.revisions, p)
			return l.r.deactivate(p)
		}
		l.revisions[p] = renewed.Token
		if !part.isServing(ps) && ps.setServing(p, true) {
			l.r.logger().Debug("journal: serving partition handed over", "partition", p)
		}
		return nil
	case owner == "" && desired == l.id:
		part := ps.get(p)
		if part == nil {
			_, err := l.r.activate(ctx, p)
			return err
		}
		if !part.isWarm(ps) {
			return nil
		}
		claimed, err := l.owners.Acquire(ctx, ownerKey(p))
		if err != nil {
			return nil // someone else claimed it first; the next round sorts it out
		}
		l.revisions[p] = claimed.Token
		ps.setServing(p, true)
		l.r.logger().Debug("journal: claimed partition", "partition", p)
		return nil
	case desired == l.id:
		// Another replica holds it; warm up so it can hand over.
		if ps.get(p) == nil {
			_, err := l.r.activate(ctx, p)
			return err
		}
		if _, ok := l.revisions[p]; ok { // it was ours: the lease lapsed
			delete(l.revisions, p)
			ps.setServing(p, false)
		}
		return nil
	default:
		if ps.get(p) != nil {
			delete(l.revisions, p)
			return l.r.deactivate(p)
		}
		return nil
	}
}

func (part *partition) isWarm(ps *partitions) bool {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return part.warm
}

func (part *partition) isServing(ps *partitions) bool {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return part.serving
}

// release checkpoints every partition and gives up its leases and the
// membership, so the other replicas take over at their next round
// instead of after LeaseTTL. Run calls it once folding has stopped.
func (l *leases) release() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, part := range l.r.parts.all() {
		l.r.parts.setServing(part.num, false)
		errs = append(errs, l.r.deactivate(part.num))
	}
	for p, rev := range l.revisions {
		l.owners.Release(ctx, held(p, rev))
	}
	_ = l.kv.Delete(ctx, memberPrefix+l.id)
	return errors.Join(errs...)
}
