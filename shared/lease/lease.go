// Package lease gives one holder at a time a key of a NATS KV bucket, with
// the key's revision as the fencing token. It is how factsync's single
// writers (a peer's receipts log, the snapshot writer and its per-authority
// fences) pick one active replica and keep a paused one from writing.
//
// A lease is one KV key whose value names the holder and when its lease
// runs out on the holder's clock. Taking and renewing it are
// compare-and-set writes on the key's revision:
//
//   - Acquire creates the key when it is missing, and otherwise updates it
//     from the revision it read, when the lease there ran out or is this
//     holder's own. Two replicas racing for it: one update wins, the other
//     finds the revision moved and gets ReasonConflict.
//   - Renew updates the key from the revision of the holder's last write.
//     A holder paused past its lease that comes back finds the revision
//     moved (another holder took it) and gets ReasonConflict.
//   - Release deletes the key only at the holder's last revision, so a
//     stale holder's release cannot free a lease someone else now holds.
//
// The revision after each write is the fencing token. It only grows, and
// every token of a later holder is above every token of an earlier one,
// so whatever a holder writes elsewhere carries the token and is refused
// once a higher one has been seen.
//
// Expiry is judged on the injected clock (the tests drive it with
// clock.Fake), which assumes the replicas' clocks agree to well within a
// lease, as NTP gives. A holder stops acting one renewal interval before
// its lease runs out; the fencing token covers what clock drift or a pause
// lets through.
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderToken carries a writer's fencing token on the messages it
// publishes, so that readers and later writers can tell whose they are.
const HeaderToken = "Fs-Fence"

// Keeper takes, renews and releases leases on the keys of one KV bucket
// for one holder.
type Keeper struct {
	kv     jetstream.KeyValue
	holder string
	ttl    time.Duration
	clock  clock.Clock
}

// NewKeeper returns the keeper of holder's leases in kv. ttl is how long a
// lease lasts without renewal.
func NewKeeper(kv jetstream.KeyValue, holder string, ttl time.Duration, clk clock.Clock) *Keeper {
	if clk == nil {
		clk = clock.Real{}
	}
	return &Keeper{kv: kv, holder: holder, ttl: ttl, clock: clk}
}

// Holder is the name this keeper holds leases under.
func (k *Keeper) Holder() string { return k.holder }

// TTL is how long a lease lasts without renewal.
func (k *Keeper) TTL() time.Duration { return k.ttl }

// Lease is a held lease. Token is the fencing token; it moves on every
// renewal. Expires is when the lease runs out unless renewed.
type Lease struct {
	Key     string
	Token   uint64
	Expires time.Time
}

// State is what a lease key says: who holds it and until when.
type State struct {
	Holder   string    `json:"holder"`
	Expires  time.Time `json:"expires"`
	Revision uint64    `json:"-"`
}

// Free reports whether the lease can be taken at now by holder.
func (s State) Free(holder string, now time.Time) bool {
	return s.Holder == "" || s.Holder == holder || !now.Before(s.Expires)
}

// Acquire takes the lease on key when nobody holds it, when its holder's
// lease ran out, or when this holder holds it already. Otherwise it returns
// ReasonConflict naming the holder.
func (k *Keeper) Acquire(ctx context.Context, key string) (Lease, error) {
	now := k.clock.Now()
	cur, err := k.Read(ctx, key)
	if err != nil {
		return Lease{}, err
	}
	if !cur.Free(k.holder, now) {
		return Lease{}, events.Errorf(events.ReasonConflict, "lease %s is held by %s until %s", key, cur.Holder, cur.Expires.UTC().Format(time.RFC3339Nano))
	}
	var rev uint64
	if cur.Revision == 0 {
		rev, err = k.kv.Create(ctx, key, k.value(now))
	} else {
		rev, err = k.kv.Update(ctx, key, k.value(now), cur.Revision)
	}
	if err != nil {
		return Lease{}, lost(err, key, "another holder took it first")
	}
	return Lease{Key: key, Token: rev, Expires: now.Add(k.ttl)}, nil
}

// Renew extends l from its token. It fails with ReasonConflict when
// another holder has taken the lease since: the caller must stop writing.
func (k *Keeper) Renew(ctx context.Context, l *Lease) error {
	now := k.clock.Now()
	rev, err := k.kv.Update(ctx, l.Key, k.value(now), l.Token)
	if err != nil {
		return lost(err, l.Key, "another holder took it over (this holder's lease ran out)")
	}
	l.Token, l.Expires = rev, now.Add(k.ttl)
	return nil
}

// Transfer hands l over to the holder named to, from l's token, with a
// fresh lease. The new holder renews it from the revision it reads. It
// fails with ReasonConflict when l was lost meanwhile.
func (k *Keeper) Transfer(ctx context.Context, l Lease, to string) error {
	b, _ := json.Marshal(State{Holder: to, Expires: k.clock.Now().Add(k.ttl)})
	if _, err := k.kv.Update(ctx, l.Key, b, l.Token); err != nil {
		return lost(err, l.Key, "another holder took it over before the transfer")
	}
	return nil
}

// Release gives the lease up, unless another holder holds it by now.
func (k *Keeper) Release(ctx context.Context, l Lease) {
	_ = k.kv.Delete(ctx, l.Key, jetstream.LastRevision(l.Token))
}

// Read returns the state of key; the zero State when nobody holds it.
func (k *Keeper) Read(ctx context.Context, key string) (State, error) {
	entry, err := k.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return State{}, nil
	case err != nil:
		return State{}, events.Wrap(events.ReasonUnavailable, err, "read lease "+key)
	}
	var st State
	if len(entry.Value()) > 0 { // a released key reads as empty until purged
		if err := json.Unmarshal(entry.Value(), &st); err != nil {
			return State{}, events.Wrap(events.ReasonInternal, err, "decode lease "+key)
		}
	}
	st.Revision = entry.Revision()
	return st, nil
}

func (k *Keeper) value(now time.Time) []byte {
	b, _ := json.Marshal(State{Holder: k.holder, Expires: now.Add(k.ttl)})
	return b
}

// lost turns a failed compare-and-set into ReasonConflict; other failures
// are ReasonUnavailable.
func lost(err error, key, why string) error {
	var apiErr *jetstream.APIError
	if errors.Is(err, jetstream.ErrKeyExists) || (errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
		return events.Errorf(events.ReasonConflict, "lease %s: %s", key, why)
	}
	return events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("lease %s", key))
}
