package lease

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/factsync/factsync/events"
)

// ErrFenced is what a leader returns once it has seen a write under a
// higher fencing token than its own: another replica took over while this
// one was paused. Campaign then steps down and stands by again.
var ErrFenced = errors.New("a newer holder has written: stepping down")

// Term is one tenure of the active replica.
type Term struct {
	token atomic.Uint64
}

// Token is the current fencing token, to put on every write. It moves on
// every renewal and is always above the tokens of earlier holders.
func (t *Term) Token() uint64 { return t.token.Load() }

// Campaign makes this keeper's replica the one active replica for key
// whenever it can, until ctx ends. Standing by, it tries to take the lease
// every TTL/4, which succeeds once the holder's lease ran out or was
// released. Holding it, it runs lead and renews the lease every TTL/4.
// lead's context ends when the lease is lost: a renewal refused because
// another holder took it, or renewals failing until less than one
// interval of the lease is left (the replica steps down before its lease
// can lapse). Campaign waits for lead to return before it stands by
// again, so one keeper never runs two leads at once.
//
// A lead that returns ErrFenced, or returns nil while ctx lasts, steps
// down: the lease is released and the replica stands by. Any other error
// ends Campaign with that error. When ctx ends, lead is stopped and the
// lease released, so a standby takes over at its next try instead of
// after the TTL.
func (k *Keeper) Campaign(ctx context.Context, key string, log *slog.Logger, lead func(context.Context, *Term) error) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ticker := k.clock.NewTicker(k.ttl / 4)
	defer ticker.Stop()
	for {
		l, err := k.Acquire(ctx, key)
		switch {
		case err == nil:
			log.Info("lease: active", "lease", key, "holder", k.holder, "token", l.Token)
			if err := k.hold(ctx, ticker.C(), l, log, lead); err != nil {
				return err
			}
		case ctx.Err() != nil:
			return nil
		case !events.IsReason(err, events.ReasonConflict):
			log.Warn("lease: cannot campaign; retrying", "lease", key, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		}
	}
}

// hold runs lead under l and renews l on every tick until lead returns or
// the lease is lost.
func (k *Keeper) hold(ctx context.Context, tick <-chan time.Time, l Lease, log *slog.Logger, lead func(context.Context, *Term) error) error {
	term := &Term{}
	term.token.Store(l.Token)
	leadCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- lead(leadCtx, term) }()
	ended := func(err error) error {
		release, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		k.Release(release, l)
		switch {
		case errors.Is(err, ErrFenced):
			log.Warn("lease: fenced off by a newer holder; standing by", "lease", l.Key, "token", l.Token)
			return nil
		case err == nil || errors.Is(err, context.Canceled):
			return nil
		}
		return err
	}
	interval := k.ttl / 4
	for {
		select {
		case err := <-done:
			return ended(err)
		case <-tick:
		}
		err := k.Renew(ctx, &l)
		if err == nil {
			term.token.Store(l.Token)
			continue
		}
		if ctx.Err() != nil {
			continue // lead is stopping with ctx; wait for it
		}
		if events.IsReason(err, events.ReasonConflict) || !k.clock.Now().Add(interval).Before(l.Expires) {
			log.Warn("lease: lost; standing by", "lease", l.Key, "err", err)
			stop()
			return ended(<-done)
		}
		log.Warn("lease: renewal failed; retrying while the lease lasts", "lease", l.Key, "expires", l.Expires, "err", err)
	}
}
