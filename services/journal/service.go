// Package journal folds each authority's accepted facts (stream JOURNAL)
// into documents, answers get, query and count requests about them, and
// announces every visible change on fs.changes.<auth>.<coll>.<doc>.
//
// The fold is shared/fold, so every replica that has seen the same facts
// holds the same documents; queries are shared/query. The journal
// checkpoints its state with the JOURNAL sequence it reflects, so a restart
// loads the checkpoint and folds only the facts after it.
package journal

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Name is the service's name, durable consumer and queue group.
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
}

func (c Config) withDefaults() Config {
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 10 * time.Second
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
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
// is the guard's, and only the guard's NATS user may change it.
func (s *Service) Streams() []jetstream.StreamConfig { return nil }

// run is one run of the service.
type run struct {
	cfg     Config
	env     *service.Env
	replica *replica

	streamCreated int64  // identifies the JOURNAL this state was folded from
	saved         uint64 // sequence of the last checkpoint written

	folded    metric.Int64Counter
	malformed metric.Int64Counter
}

// Run implements service.Service. It resumes from the checkpoint in
// env.DataDir, folds JOURNAL until it has caught up, then serves requests
// and keeps folding until ctx is cancelled, when it writes a last
// checkpoint.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	r := &run{cfg: s.cfg, env: env, replica: newReplica(s.cfg.Indexes)}
	if err := r.instrument(); err != nil {
		return err
	}
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
	r.streamCreated = info.Created.UnixNano()
	r.resume(ctx, stream)

	cons, err := r.consumer(ctx, stream)
	if err != nil {
		return err
	}
	caughtUp := make(chan struct{})
	ctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel(nil)
		wg.Wait()
	}()
	wg.Go(func() {
		if err := r.consume(ctx, cons, caughtUp); err != nil {
			cancel(err)
		}
	})

	// finish stops folding and saves how far it got, whenever Run ends
	// after folding started.
	finish := func() error {
		<-ctx.Done()
		wg.Wait()
		if err := r.checkpoint(); err != nil {
			return err
		}
		return stopped(ctx)
	}
	select {
	case <-caughtUp:
	case <-ctx.Done():
		return finish()
	}
	// Save what catching up folded, so the next restart need not repeat it.
	if err := r.checkpoint(); err != nil {
		return err
	}
	subs, err := r.serve()
	if err != nil {
		return err
	}
	defer func() {
		for _, sub := range subs {
			_ = sub.Drain()
		}
	}()
	if env.Ready != nil {
		env.Ready()
	}
	wg.Go(func() {
		if err := r.checkpointLoop(ctx); err != nil {
			cancel(err)
		}
	})
	return finish()
}

// stopped is Run's result once ctx is done: nil for a plain cancellation.
func stopped(ctx context.Context) error {
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// resume loads the checkpoint, unless it is missing, damaged, or belongs
// to another JOURNAL (recreated, or no longer holding the checkpoint's last
// message): then the journal folds the stream from its start, which is
// always correct, only slower.
func (r *run) resume(ctx context.Context, stream jetstream.Stream) {
	c, err := readCheckpoint(r.env.DataDir)
	switch {
	case errors.Is(err, errNoCheckpoint):
		return
	case err != nil:
		r.logger().Warn("journal: ignoring checkpoint, folding JOURNAL from the start", "err", err)
		return
	case c.streamCreated != r.streamCreated || !r.streamHolds(ctx, stream, c.tip):
		r.logger().Warn("journal: checkpoint is of another JOURNAL, folding from the start", "checkpoint_seq", c.tip.seq)
		return
	}
	r.replica.restore(c.tip, c.folds)
	r.saved = c.tip.seq
	r.logger().Info("journal: resumed from checkpoint", "seq", c.tip.seq)
}

// streamHolds reports whether JOURNAL still has the message t names.
func (r *run) streamHolds(ctx context.Context, stream jetstream.Stream, t tip) bool {
	m, err := stream.GetMsg(ctx, t.seq)
	return err == nil && sha256.Sum256(m.Data) == t.hash
}

// consumer (re)creates the durable consumer to start right after the
// checkpoint. The checkpoint, not the consumer's ack floor, is the
// journal's position: facts acked after the last checkpoint must be folded
// again, so the consumer is replaced rather than resumed.
func (r *run) consumer(ctx context.Context, stream jetstream.Stream) (jetstream.Consumer, error) {
	if err := stream.DeleteConsumer(ctx, Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("journal: replace JOURNAL consumer: %w", err)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       Name,
		Description:   "folds accepted facts into documents",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: events.JournalPrefix + ".>",
		MaxAckPending: 8 * r.cfg.BatchSize,
	}
	if seq := r.replica.position(); seq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
	}
	cons, err := stream.CreateConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("journal: create JOURNAL consumer: %w", err)
	}
	return cons, nil
}

// consume folds JOURNAL in batches: it takes what has arrived (up to
// BatchSize), folds it under one lock, publishes the visible changes and
// acks. It closes caughtUp once it has folded everything that was in the
// stream when it started.
func (r *run) consume(ctx context.Context, cons jetstream.Consumer, caughtUp chan struct{}) error {
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("journal: read consumer info: %w", err)
	}
	markCaughtUp := sync.OnceFunc(func() { close(caughtUp) })
	if info.NumPending == 0 {
		markCaughtUp()
	}
	msgs, err := cons.Messages(jetstream.PullMaxMessages(2 * r.cfg.BatchSize))
	if err != nil {
		return fmt.Errorf("journal: consume JOURNAL: %w", err)
	}
	incoming := make(chan jetstream.Msg)
	var nextErr error // set before incoming is closed
	go func() {
		defer close(incoming)
		for {
			m, err := msgs.Next()
			if err != nil {
				nextErr = err
				return
			}
			select {
			case incoming <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		msgs.Stop()
		for range incoming { // unblock the reader
		}
	}()
	batch := make([]jetstream.Msg, 0, r.cfg.BatchSize)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-incoming:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("journal: JOURNAL consumer stopped: %w", nextErr)
			}
			batch = append(batch, m)
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case m, ok := <-incoming:
				if !ok {
					break fill
				}
				batch = append(batch, m)
			default:
				break fill
			}
		}
		if r.foldBatch(ctx, batch) {
			markCaughtUp()
		}
	}
}

// foldBatch folds, announces and acks one batch. It reports whether the
// batch ended at the stream's end as the consumer saw it.
func (r *run) foldBatch(ctx context.Context, batch []jetstream.Msg) (atEnd bool) {
	facts := make([]folded, 0, len(batch))
	var (
		through tip
		last    jetstream.Msg
	)
	for _, m := range batch {
		meta, err := m.Metadata()
		if err != nil {
			continue
		}
		atEnd, through.seq, last = meta.NumPending == 0, meta.Sequence.Stream, m
		f, err := factOf(m)
		if err != nil {
			// The guard wrote something that is not an accepted fact. It
			// can never become one, so skip it rather than stop folding.
			r.logger().Error("journal: skipping a JOURNAL message that is not an accepted fact",
				"subject", m.Subject(), "seq", meta.Sequence.Stream, "err", err)
			r.malformed.Add(ctx, 1)
			continue
		}
		facts = append(facts, folded{fact: f, seq: meta.Sequence.Stream})
	}
	if last != nil {
		through.hash = sha256.Sum256(last.Data())
	}
	changes := r.replica.apply(facts, through)
	r.folded.Add(ctx, int64(len(facts)))
	r.announce(ctx, batch, changes)
	for _, m := range batch {
		_ = m.Ack()
	}
	return atEnd
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

// checkpointLoop checkpoints every CheckpointInterval while the state
// changes.
func (r *run) checkpointLoop(ctx context.Context) error {
	ticker := r.env.Clock.NewTicker(r.cfg.CheckpointInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
			if err := r.checkpoint(); err != nil {
				return err
			}
		}
	}
}

// checkpoint writes the state if it moved since the last checkpoint. Only
// the fold loop's caller and checkpointLoop call it, never concurrently:
// Run calls it before starting the loop and after the loop has stopped.
func (r *run) checkpoint() error {
	if r.replica.position() == r.saved {
		return nil
	}
	seq, data, err := r.replica.encode(r.streamCreated)
	if err != nil {
		return fmt.Errorf("journal: encode checkpoint: %w", err)
	}
	if err := writeCheckpoint(r.env.DataDir, data); err != nil {
		return fmt.Errorf("journal: write checkpoint: %w", err)
	}
	r.saved = seq
	return nil
}

func (r *run) instrument() error {
	meter := r.env.Meter
	if meter == nil {
		meter = noop.NewMeterProvider().Meter(Name)
	}
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	r.folded = counter("journal.facts.folded", "facts folded into documents")
	r.malformed = counter("journal.facts.malformed", "JOURNAL messages that are not an accepted fact and were skipped")
	return errors.Join(errs...)
}

func (r *run) logger() *slog.Logger {
	if r.env.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.env.Log
}
