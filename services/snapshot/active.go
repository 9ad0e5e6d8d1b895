package snapshot

import (
	"context"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/lease"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// The active replica. Every replica of the service answers requests:
// list, fetch, approve and restore read the SNAPSHOTS ledger and the
// object store, and a requested snapshot is written under its authority's
// writer fence (fence.go). What one replica alone must do is count each
// authority's new facts and start the automatic snapshots: the counting
// consumer on JOURNAL is one durable that the replicas would otherwise
// split between them (each would see a share of the facts and trigger too
// late), and two replicas would each trigger the same snapshot. That
// replica holds the lease writerKey in WriterBucket; the others stand by
// with the ledger caught up and take over when the lease lapses. Their
// counts start afresh from the durable's position; a snapshot a paused
// replica still tries to write is refused by the authority's fence and by
// the ledger's fencing-token check, as any writer's is.

// WriterBucket is the KV bucket of the active replica's lease.
func WriterBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      "snapshot-writer",
		Description: "the snapshot service's active replica, which counts facts and triggers snapshots; the revision is the fencing token",
		Storage:     jetstream.FileStorage,
		History:     1,
	}
}

const writerKey = "triggers"

// triggerWhileActive counts JOURNAL's new facts per authority and starts
// the automatic snapshots until ctx ends (the lease is lost or the service
// stops).
func (s *Service) triggerWhileActive(ctx context.Context, journal jetstream.Consumer) error {
	s.mu.Lock()
	s.auths = map[events.AuthorityID]*authState{}
	s.mu.Unlock()
	s.active.Store(true)
	defer s.active.Store(false)
	counting, err := journal.Consume(s.count)
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "snapshot: consume JOURNAL")
	}
	defer counting.Stop()
	ticker := s.env.Clock.NewTicker(s.cfg.Tick)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
			s.trigger(ctx)
		}
	}
}

// campaign runs the triggers whenever this replica holds the lease.
func (s *Service) campaign(ctx context.Context, kv jetstream.KeyValue, journal jetstream.Consumer) error {
	keeper := lease.NewKeeper(kv, holderName(s.env.Peer), s.cfg.Lease, s.env.Clock)
	return keeper.Campaign(ctx, writerKey, s.env.Log, func(ctx context.Context, _ *lease.Term) error {
		return s.triggerWhileActive(ctx, journal)
	})
}

// observeAge reports factsync.snapshot.age on the active replica: per
// authority, how far behind the clock the cut of its newest committed
// snapshot is, which is how much history a peer bootstrapping from it
// still replays.
func (s *Service) observeAge(meter metric.Meter) (metric.Registration, error) {
	age, err := meter.Float64ObservableGauge("factsync.snapshot.age", metric.WithUnit("s"),
		metric.WithDescription("time from the cut of each authority's newest committed snapshot to now"))
	if err != nil {
		return nil, err
	}
	return meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		if !s.active.Load() {
			return nil
		}
		now := s.env.Clock.Now()
		return s.log.read(ctx, func(l *Ledger) {
			for auth := range l.order {
				if info, ok := l.Latest(auth); ok {
					cut := time.Unix(int64(info.CutSeconds), 0)
					o.ObserveFloat64(age, now.Sub(cut).Seconds(), metric.WithAttributes(attribute.String("authority", string(auth))))
				}
			}
		})
	}, age)
}
