package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
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

// Fence hands out writer leases.
type Fence struct {
	kv     jetstream.KeyValue
	clock  clock.Clock
	lease  time.Duration
	holder string
}

// NewFence returns a fence for one writer. holder names the writer (its
// peer); a random suffix tells apart processes of the same peer.
func NewFence(kv jetstream.KeyValue, clk clock.Clock, lease time.Duration, holder events.PeerID) *Fence {
	if lease <= 0 {
		lease = DefaultLease
	}
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	return &Fence{kv: kv, clock: clk, lease: lease, holder: string(holder) + "/" + hex.EncodeToString(nonce[:])}
}

// Lease is a held fence. Token is the fencing token, which moves on every
// renewal.
type Lease struct {
	Authority events.AuthorityID
	Token     uint64
	Expires   time.Time
}

type leaseValue struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// Acquire takes the fence for auth: when nobody holds it, when its lease
// has run out, or when this writer holds it already. Otherwise it returns
// ReasonConflict naming the holder.
func (f *Fence) Acquire(ctx context.Context, auth events.AuthorityID) (Lease, error) {
	now := f.clock.Now()
	val := f.value(now)
	entry, err := f.kv.Get(ctx, string(auth))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		rev, err := f.kv.Create(ctx, string(auth), val)
		if err != nil {
			return Lease{}, lost(err, auth, "another writer took it first")
		}
		return Lease{Authority: auth, Token: rev, Expires: now.Add(f.lease)}, nil
	case err != nil:
		return Lease{}, events.Wrap(events.ReasonUnavailable, err, "read the snapshot fence")
	}
	var cur leaseValue
	if len(entry.Value()) > 0 {
		if err := json.Unmarshal(entry.Value(), &cur); err != nil {
			return Lease{}, events.Wrap(events.ReasonInternal, err, "decode the snapshot fence")
		}
	}
	if cur.Holder != f.holder && now.Before(cur.Expires) {
		return Lease{}, events.Errorf(events.ReasonConflict, "snapshot writer fence of %s is held by %s until %s", auth, cur.Holder, cur.Expires.Format(time.RFC3339))
	}
	rev, err := f.kv.Update(ctx, string(auth), val, entry.Revision())
	if err != nil {
		return Lease{}, lost(err, auth, "another writer took it first")
	}
	return Lease{Authority: auth, Token: rev, Expires: now.Add(f.lease)}, nil
}

// Renew extends l from its token. It fails with ReasonConflict when
// another writer has taken the fence since: the caller must not write.
func (f *Fence) Renew(ctx context.Context, l *Lease) error {
	now := f.clock.Now()
	rev, err := f.kv.Update(ctx, string(l.Authority), f.value(now), l.Token)
	if err != nil {
		return lost(err, l.Authority, "another writer took it over (this writer's lease ran out)")
	}
	l.Token, l.Expires = rev, now.Add(f.lease)
	return nil
}

// Release gives the fence up, unless another writer holds it by now.
func (f *Fence) Release(ctx context.Context, l Lease) {
	_ = f.kv.Delete(ctx, string(l.Authority), jetstream.LastRevision(l.Token))
}

func (f *Fence) value(now time.Time) []byte {
	b, _ := json.Marshal(leaseValue{Holder: f.holder, Expires: now.Add(f.lease)})
	return b
}

// lost turns a failed compare-and-set into ReasonConflict; other failures
// are ReasonUnavailable.
func lost(err error, auth events.AuthorityID, why string) error {
	var apiErr *jetstream.APIError
	if errors.Is(err, jetstream.ErrKeyExists) || (errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
		return events.Errorf(events.ReasonConflict, "snapshot writer fence of %s: %s", auth, why)
	}
	return events.Wrap(events.ReasonUnavailable, err, "snapshot writer fence of "+string(auth))
}
