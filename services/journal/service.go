// Package journal folds each authority's accepted facts (stream JOURNAL)
// into documents, answers get, query and count requests about them, and
// announces every visible change on fs.changes.<auth>.<coll>.<doc>.
//
// The fold is shared/fold, so every replica that has seen the same facts
// holds the same documents; queries are shared/query.
//
// Replicas share the work by authority (lease.go): the authorities fall
// into Partitions partitions (PartitionOf), and each partition is owned by
// one live replica, which folds it, answers the requests about its
// authorities and announces their changes. Every replica reads JOURNAL
// once, in order, and folds only the facts of the partitions it holds.
// Each partition is checkpointed on its own with the JOURNAL sequence it
// reflects, so a restart, or a replica taking a partition over, loads the
// checkpoint and folds only the facts after it.
package journal

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/backlog"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Name is the service's name.
const Name = "journal"

// Config tunes the journal. The zero value is usable.
type Config struct {
	// Indexes declares the fields to index, per collection; the key "*"
	// applies to every collection. An eq or in query on an indexed field
	// looks up its documents instead of scanning the collection.
	Indexes map[string][]string
	// CheckpointInterval is how often the state is checkpointed when it
	// has changed. Default 10s. A restart folds at most the facts of one
	// interval again.
	CheckpointInterval time.Duration
	// BatchSize is the most JOURNAL messages folded under one lock.
	// Default 512.
	BatchSize int
	// Partitions is how many partitions the authorities are spread over
	// (DefaultPartitions). Every replica must use the same number.
	Partitions int
	// LeaseTTL is how long a partition lease lasts without renewal
	// (DefaultLeaseTTL): the longest a dead replica's partitions go
	// unanswered. Replicas renew every LeaseTTL/4.
	LeaseTTL time.Duration
}

func (c Config) withDefaults() Config {
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 10 * time.Second
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	if c.Partitions <= 0 {
		c.Partitions = DefaultPartitions
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	return c
}

// Service is the journal service.
type Service struct {
	cfg Config
}

// New returns the journal service.
func New(cfg Config) *Service { return &Service{cfg: cfg.withDefaults()} }

// Name implements service.Service.
func (s *Service) Name() string { return Name }

// Streams implements service.Service. The journal owns no stream: JOURNAL
// is the guard's, and only the guard's NATS user may change it. It
// provisions its lease bucket itself.
func (s *Service) Streams() []jetstream.StreamConfig { return nil }

// run is one run of the service.
type run struct {
	cfg    Config
	env    *service.Env
	id     string // this replica among the journal's replicas
	stream jetstream.Stream
	parts  *partitions
	tracer trace.Tracer

	streamCreated int64         // identifies the JOURNAL the state was folded from
	pending       atomic.Uint64 // JOURNAL facts not yet delivered to the reader

	folded    metric.Int64Counter
	malformed metric.Int64Counter
	observed  metric.Registration // the gauges' callback
}

// Run implements service.Service. It joins the journal's replicas, takes
// its share of the partitions (each resumed from its checkpoint in
// env.DataDir), and folds and serves them until ctx is cancelled, when it
// checkpoints them and hands them back.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	r := &run{cfg: s.cfg, env: env, id: nuid.Next(), parts: newPartitions(s.cfg.Partitions, s.cfg.Indexes, env.DataDir), tracer: env.Tracer}
	if r.tracer == nil {
		r.tracer = tracenoop.NewTracerProvider().Tracer(Name)
	}
	if err := r.instrument(); err != nil {
		return err
	}
	defer func() { _ = r.observed.Unregister() }()
	stream, err := bus.WaitForStream(ctx, env.JS, events.StreamJournal, env.Clock, env.Log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped before the guard created JOURNAL
		}
		return fmt.Errorf("journal: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("journal: read JOURNAL info: %w", err)
	}
	r.stream, r.streamCreated = stream, info.Created.UnixNano()
	kvs, err := bus.ProvisionKV(ctx, env.JS, jetstream.KeyValueConfig{
		Bucket:      LeaseBucket,
		Description: "journal replicas and the partitions each owns",
		TTL:         s.cfg.LeaseTTL,
		Replicas:    info.Config.Replicas,
	})
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	l := &leases{r: r, kv: kvs[0], id: r.id, handingOver: map[int]int{}, revisions: map[int]uint64{}}

	ctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel(nil)
		wg.Wait()
	}()
	subs, err := r.serve()
	if err != nil {
		return err
	}
	defer func() {
		for _, sub := range subs {
			_ = sub.Drain()
		}
	}()
	ready := func() {
		r.logger().Info("journal: every partition has an owner", "replica", r.id)
		if env.Ready != nil {
			env.Ready()
		}
	}
	for _, loop := range []func(context.Context) error{
		r.read,
		func(ctx context.Context) error { return l.loop(ctx, ready) },
		r.checkpointLoop,
		func(ctx context.Context) error {
			return backlog.Watch(ctx, r.meter(), env.Clock, 0, r.logger(), backlog.Source{
				Stream: events.StreamJournal, Consumer: Name,
				Pending: func(context.Context) (uint64, error) { return r.pending.Load(), nil },
			})
		},
	} {
		wg.Go(func() {
			if err := loop(ctx); err != nil {
				cancel(err)
			}
		})
	}
	<-ctx.Done()
	wg.Wait()
	if err := l.release(); err != nil {
		return err
	}
	return stopped(ctx)
}

// stopped is Run's result once ctx is done: nil for a plain cancellation.
func stopped(ctx context.Context) error {
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// activate starts folding partition p from its checkpoint, which is
// trusted only when it is of this JOURNAL and the stream still holds the
// message it ends at; otherwise the partition folds JOURNAL from the
// start, which is always correct, only slower.
func (r *run) activate(ctx context.Context, p int) (*partition, error) {
	if part := r.parts.get(p); part != nil {
		return part, nil
	}
	// What the partition must fold before it is current.
	var target uint64
	last, err := r.stream.GetLastMsgForSubject(ctx, events.JournalPrefix+".>")
	switch {
	case err == nil:
		target = last.Sequence
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, fmt.Errorf("journal: read JOURNAL's last fact: %w", err)
	}
	state := newReplica(r.cfg.Indexes)
	dir := r.parts.checkpointDir(p)
	c, err := readCheckpoint(dir)
	switch {
	case errors.Is(err, errNoCheckpoint):
	case err != nil:
		r.logger().Warn("journal: ignoring checkpoint, folding the partition from the start", "partition", p, "err", err)
	case c.streamCreated != r.streamCreated || !r.streamHolds(ctx, c.tip):
		r.logger().Warn("journal: checkpoint is of another JOURNAL, folding the partition from the start", "partition", p, "checkpoint_seq", c.tip.seq)
	default:
		state.restore(c.tip, c.folds)
	}
	r.logger().Debug("journal: activating partition", "partition", p, "from_seq", state.position(), "target_seq", target)
	return r.parts.add(p, state, state.position(), target), nil
}

// deactivate checkpoints partition p and stops folding it.
func (r *run) deactivate(p int) error {
	part := r.parts.remove(p)
	if part == nil {
		return nil
	}
	return part.checkpoint(r.streamCreated)
}

// streamHolds reports whether JOURNAL still has the message t names.
func (r *run) streamHolds(ctx context.Context, t tip) bool {
	m, err := r.stream.GetMsg(ctx, t.seq)
	return err == nil && sha256.Sum256(m.Data) == t.hash
}

// errRewind ends a reader run so the next one covers a new partition.
var errRewind = errors.New("rewind")

// read folds JOURNAL for the active partitions. Each run of the reader is
// an ordered consumer from the lowest position among them; activating a
// partition starts a new run.
func (r *run) read(ctx context.Context) error {
	for {
		start, ok := r.parts.attachAll()
		if !ok {
			select {
			case <-ctx.Done():
				return nil
			case <-r.parts.rewind:
				continue
			}
		}
		cons, err := r.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{events.JournalPrefix + ".>"},
			DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:    start,
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("journal: JOURNAL consumer: %w", err)
		}
		switch err := r.consume(ctx, cons); {
		case errors.Is(err, errRewind):
		case err != nil:
			return err
		default:
			return nil
		}
	}
}

// consume folds JOURNAL in batches: it takes what has arrived (up to
// BatchSize), folds it and publishes the visible changes, until ctx ends
// (nil) or a partition is activated (errRewind).
func (r *run) consume(ctx context.Context, cons jetstream.Consumer) error {
	msgs, err := cons.Messages(jetstream.PullMaxMessages(2 * r.cfg.BatchSize))
	if err != nil {
		return fmt.Errorf("journal: consume JOURNAL: %w", err)
	}
	incoming := bus.Deliver(msgs, r.cfg.BatchSize)
	defer incoming.Stop()
	// A reader that finds JOURNAL empty past its start has caught up.
	r.parts.folded(r.parts.attached(), r.caughtUp(ctx, cons), 0)
	batch := make([]jetstream.Msg, 0, r.cfg.BatchSize)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case <-r.parts.rewind:
			return errRewind
		case m, ok := <-incoming.C:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("journal: JOURNAL consumer stopped: %w", incoming.Err())
			}
			batch = append(batch, m)
		}
		batch = bus.TakeReady(batch, incoming.C, cap(batch))
		r.foldBatch(ctx, batch)
	}
}

// caughtUp reports whether the consumer has nothing to deliver.
func (r *run) caughtUp(ctx context.Context, cons jetstream.Consumer) bool {
	info, err := cons.Info(ctx)
	if err != nil {
		return false
	}
	r.pending.Store(info.NumPending)
	return info.NumPending == 0
}

// fact is one JOURNAL message of a batch, decoded.
type fact struct {
	msg  jetstream.Msg
	fact *events.Fact
	seq  uint64
	part int
}

// foldBatch folds one batch into every attached partition (each takes its
// own facts, and moves its position to the batch's end) and announces the
// changes of the partitions this replica serves.
func (r *run) foldBatch(ctx context.Context, batch []jetstream.Msg) {
	var (
		through tip
		last    jetstream.Msg
		stored  time.Time
		atEnd   bool
		facts   []fact
	)
	for _, m := range batch {
		meta, err := m.Metadata()
		if err != nil {
			continue
		}
		atEnd, through.seq, last, stored = meta.NumPending == 0, meta.Sequence.Stream, m, meta.Timestamp
		r.pending.Store(meta.NumPending)
		f, err := factOf(m)
		if err != nil {
			// The guard wrote something that is not an accepted fact. It
			// can never become one, so skip it rather than stop folding.
			r.logger().Error("journal: skipping a JOURNAL message that is not an accepted fact",
				"subject", m.Subject(), "seq", meta.Sequence.Stream, "err", err)
			r.malformed.Add(ctx, 1)
			continue
		}
		facts = append(facts, fact{msg: m, fact: f, seq: meta.Sequence.Stream, part: PartitionOf(f.Authority, r.parts.n)})
	}
	if last == nil {
		return
	}
	through.hash = sha256.Sum256(last.Data())
	parts := r.parts.attached()
	for _, part := range parts {
		var mine []fact
		for _, f := range facts {
			if f.part == part.num {
				mine = append(mine, f)
			}
		}
		r.foldPartition(ctx, part, mine, through)
	}
	r.parts.folded(parts, atEnd, r.env.Clock.Now().Sub(stored))
}

// foldPartition folds one partition's facts of a batch, each in a span
// that continues the trace the guard put on the JOURNAL message.
func (r *run) foldPartition(ctx context.Context, part *partition, facts []fact, through tip) {
	batch := make([]folded, len(facts))
	spans := make([]trace.Span, len(facts))
	partAttr := attribute.Int("factsync.partition", part.num)
	for i, f := range facts {
		batch[i] = folded{fact: f.fact, seq: f.seq}
		_, spans[i] = r.tracer.Start(bus.ExtractTrace(ctx, f.msg.Headers()), "journal fold",
			trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(events.FactAttributes(f.fact)...),
			trace.WithAttributes(partAttr, attribute.Int64("messaging.nats.stream.sequence", int64(f.seq))))
	}
	before := part.state.position()
	changes := part.state.apply(batch, through)
	visible := map[uint64]bool{}
	for _, c := range changes {
		visible[c.seq] = true
	}
	n := 0
	for i, f := range facts {
		if f.seq > before {
			n++
		}
		spans[i].SetAttributes(attribute.Bool("factsync.fold.visible", visible[f.seq]), attribute.Bool("factsync.fold.repeat", f.seq <= before))
		spans[i].End()
	}
	r.folded.Add(ctx, int64(n), metric.WithAttributes(partAttr))
	if part.isServing(r.parts) {
		r.announce(ctx, facts, changes)
	}
}

// factOf decodes the fact of a JOURNAL message and checks that it is on
// its own authority's subject. The guard verified signature and token
// before writing JOURNAL, and only the guard may write it, so the journal
// does not verify them again.
func factOf(m jetstream.Msg) (*events.Fact, error) {
	addr, err := events.ParseJournalSubject(m.Subject())
	if err != nil {
		return nil, err
	}
	f, err := events.DecodeFact(m.Data())
	if err != nil {
		return nil, err
	}
	if f.Authority != addr.Authority || f.Collection() != addr.Collection {
		return nil, events.Errorf(events.ReasonMalformed, "fact %s of %s/%s is on subject %s", f.ID, f.Authority, f.Collection(), m.Subject())
	}
	return f, nil
}

// checkpointLoop checkpoints every active partition that moved, every
// CheckpointInterval.
func (r *run) checkpointLoop(ctx context.Context) error {
	ticker := r.env.Clock.NewTicker(r.cfg.CheckpointInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
			for _, part := range r.parts.all() {
				if err := part.checkpoint(r.streamCreated); err != nil {
					return err
				}
			}
		}
	}
}

func (r *run) meter() metric.Meter {
	if r.env.Meter == nil {
		return noop.NewMeterProvider().Meter(Name)
	}
	return r.env.Meter
}

func (r *run) instrument() error {
	meter := r.meter()
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit("{fact}"), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	r.folded = counter("factsync.journal.facts.folded", "facts folded into documents, by partition")
	r.malformed = counter("factsync.journal.facts.malformed", "JOURNAL messages that are not an accepted fact and were skipped")
	lag, err := meter.Float64ObservableGauge("factsync.journal.fold.lag", metric.WithUnit("s"),
		metric.WithDescription("time from JOURNAL storing a fact to this replica folding it, for the last fact folded, by partition"))
	errs = append(errs, err)
	owned, err := meter.Int64ObservableGauge("factsync.journal.partitions.owned", metric.WithUnit("{partition}"),
		metric.WithDescription("partitions this replica answers for"))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.observed, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		r.parts.mu.RLock()
		defer r.parts.mu.RUnlock()
		n := int64(0)
		for _, part := range r.parts.active {
			if part.serving {
				n++
				o.ObserveFloat64(lag, part.lag.Seconds(), metric.WithAttributes(attribute.String("partition", strconv.Itoa(part.num))))
			}
		}
		o.ObserveInt64(owned, n)
		return nil
	}, lag, owned)
	return err
}

func (r *run) logger() *slog.Logger {
	if r.env.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.env.Log
}
