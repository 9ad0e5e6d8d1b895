package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/lease"
	"github.com/nats-io/nats.go/jetstream"
)

// The writer fence: at most one snapshot writer per authority, across
// processes and peers that share the fence bucket. The fence is one key
// per authority in a KV bucket; taking it is a compare-and-set on the key's
// revision, and the revision after the set is the writer's fencing token.
//
// A writer renews (a compare-and-set from its token) right before each
// write. A writer paused past its lease finds, when it comes back, that
// another took the key over: the revision moved, its renewal fails, and its
// write is refused. The SNAPSHOTS ledger checks the token too: a proposal
// whose fence is below one already recorded for the authority is refused,
// which covers a writer paused between its renewal and its write.

// FenceBucket is the KV bucket of writer leases.
func FenceBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      events.SnapshotFenceBucket,
		Description: "snapshot writer leases, one per authority; the revision is the fencing token",
		Storage:     jetstream.FileStorage,
		History:     1,
	}
}

// DefaultLease is how long a writer holds the fence without renewing.
const DefaultLease = 30 * time.Second

// Fence hands out writer leases, one per authority, through shared/lease.
type Fence struct {
	keeper *lease.Keeper
}

// NewFence returns a fence for one writer. holder names the writer (its
// peer); a random suffix tells apart processes of the same peer.
func NewFence(kv jetstream.KeyValue, clk clock.Clock, ttl time.Duration, holder events.PeerID) *Fence {
	if ttl <= 0 {
		ttl = DefaultLease
	}
	return &Fence{keeper: lease.NewKeeper(kv, holderName(holder), ttl, clk)}
}

// holderName names one process of peer as a lease holder.
func holderName(peer events.PeerID) string {
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	return string(peer) + "/" + hex.EncodeToString(nonce[:])
}

// Lease is a held fence: its Key is the authority, its Token the fencing
// token, which moves on every renewal.
type Lease = lease.Lease

// Acquire takes the fence for auth: when nobody holds it, when its lease
// has run out, or when this writer holds it already. Otherwise it returns
// ReasonConflict naming the holder.
func (f *Fence) Acquire(ctx context.Context, auth events.AuthorityID) (Lease, error) {
	l, err := f.keeper.Acquire(ctx, string(auth))
	return l, fenceErr(err, auth)
}

// Renew extends l from its token. It fails with ReasonConflict when
// another writer has taken the fence since: the caller must not write.
func (f *Fence) Renew(ctx context.Context, l *Lease) error {
	return fenceErr(f.keeper.Renew(ctx, l), events.AuthorityID(l.Key))
}

// Release gives the fence up, unless another writer holds it by now.
func (f *Fence) Release(ctx context.Context, l Lease) { f.keeper.Release(ctx, l) }

// fenceErr names the authority's writer fence in a lease error, keeping
// its reason.
func fenceErr(err error, auth events.AuthorityID) error {
	var e *events.Error
	if !errors.As(err, &e) {
		return err
	}
	return &events.Error{Reason: e.Reason, Detail: "snapshot writer fence of " + string(auth) + ": " + e.Detail, Err: e.Err}
}

// keepFence renews l every Lease/3 until the returned stop is called, so a
// writer whose work outlasts the lease (a build or a prune reads the
// authority's whole JOURNAL) keeps the fence while it works and is not
// taken over by a timed trigger or another peer midway. A process that
// stops (or is paused) stops renewing, so the fence still passes on
// after the lease. stop returns the error that lost the fence, if any;
// l is not to be read until stop has returned.
func (s *Service) keepFence(ctx context.Context, l *Lease) (stop func() error) {
	quit, done := make(chan struct{}), make(chan error, 1)
	ticker := s.env.Clock.NewTicker(s.cfg.Lease / 3)
	go func() {
		defer ticker.Stop()
		for {
			select {
			case <-quit:
				done <- nil
				return
			case <-ticker.C():
				// Not cut short by quit: a renewal the server applied must
				// also move l's token, or the writer's next renewal fails.
				if err := s.fence.Renew(context.WithoutCancel(ctx), l); err != nil {
					done <- err
					return
				}
			}
		}
	}()
	return func() error {
		close(quit)
		return <-done
	}
}
