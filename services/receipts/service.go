// Package receipts is factsync's transparency log. It appends the FactID of
// every fact the guard accepted into JOURNAL to an append-only RFC 6962
// Merkle log (one per peer), signs C2SP checkpoints of it, and serves
// receipts (inclusion proofs) and consistency proofs that anyone holding
// the peer's public key can verify offline with VerifyReceipt and
// VerifyConsistency. Peers witness each other's checkpoints: they co-sign
// those consistent with everything they saw before and publish evidence of
// a fork otherwise. The hashing, proofs and notes are
// golang.org/x/mod/sumdb/tlog and .../note; this package only stores and
// serves them.
package receipts

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/backlog"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Name is the service's name, durable consumer and queue group.
const Name = "receipts"

// Config tunes the receipts service. The zero value is usable.
type Config struct {
	// CheckpointInterval is the longest an appended fact waits for a
	// signed checkpoint, and so for its receipt. Default 500ms, which keeps
	// a receipt available within 1 s of acceptance. No checkpoint is signed
	// while the log does not grow.
	CheckpointInterval time.Duration
	// CheckpointEvery signs a checkpoint early once this many facts wait
	// for one. Default 4096.
	CheckpointEvery int
	// BatchSize is the most JOURNAL messages appended with one fsync.
	// Default 512.
	BatchSize int
	// AckWait is how long JOURNAL waits for an ack before redelivering a
	// fact, e.g. after a crash. Default 30s.
	AckWait time.Duration

	// Witness lists the peers whose checkpoints this peer witnesses.
	Witness []WatchedPeer
	// WitnessInterval is how often watched peers are polled. Default 10s.
	WitnessInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 500 * time.Millisecond
	}
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 4096
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.WitnessInterval <= 0 {
		c.WitnessInterval = 10 * time.Second
	}
	return c
}

// Service is the receipts service.
type Service struct {
	cfg Config

	// beforeCommit is handed to the log; tests use it to crash mid-append.
	beforeCommit func() error
}

var _ service.Service = (*Service)(nil)

// New returns the receipts service.
func New(cfg Config) *Service { return &Service{cfg: cfg.withDefaults()} }

// Name implements service.Service.
func (s *Service) Name() string { return Name }

// Streams implements service.Service: the service owns RECEIPTS.
func (s *Service) Streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{events.ReceiptsStream()}
}

// run is one run of the service: its log, environment and instruments.
type run struct {
	cfg  Config
	env  *service.Env
	log  *Log
	peer events.PeerID

	checkpointDue chan struct{} // CheckpointEvery facts wait for a checkpoint

	appended    metric.Int64Counter
	checkpoints metric.Int64Counter
	malformed   metric.Int64Counter
	forks       metric.Int64Counter
	cosigned    metric.Int64Counter

	mu        sync.Mutex
	published int64 // size of the last checkpoint published to RECEIPTS, -1 before
}

// Run implements service.Service. It resumes the log in env.DataDir, serves
// requests, appends JOURNAL, signs checkpoints and witnesses peers until ctx
// is cancelled. It returns an error when the log cannot be appended to or
// would fork: carrying on would lose receipts or sign a second history.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	l, err := OpenLog(filepath.Join(env.DataDir, "log"))
	if err != nil {
		return err
	}
	defer l.Close()
	l.beforeCommit = s.beforeCommit
	r := &run{cfg: s.cfg, env: env, log: l, peer: env.Peer, checkpointDue: make(chan struct{}, 1), published: -1}
	if err := r.instrument(); err != nil {
		return err
	}
	if r.peer == "" {
		r.peer = events.PeerIDOf(env.PeerKey.Public().(ed25519.PublicKey))
	}
	witnesses, err := r.openWitnesses()
	if err != nil {
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
	// Run alone, the receipts service may start before the guard has
	// created JOURNAL.
	journal, err := bus.WaitForStream(ctx, env.JS, events.StreamJournal, env.Clock, env.Log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("receipts: %w", err)
	}
	cons, err := journal.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       Name,
		Description:   "appends every accepted fact to the receipts log",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: events.JournalPrefix + ".>",
		MaxAckPending: 4 * s.cfg.BatchSize,
		AckWait:       s.cfg.AckWait,
	})
	if err != nil {
		return fmt.Errorf("receipts: create JOURNAL consumer: %w", err)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context) error{
		func(ctx context.Context) error { return r.consume(ctx, cons) },
		r.checkpointLoop,
		func(ctx context.Context) error { return r.witnessLoop(ctx, witnesses) },
		r.observeLag,
		func(ctx context.Context) error {
			return backlog.Watch(ctx, env.Meter, env.Clock, 0, r.logger(), backlog.Durable(env.JS, events.StreamJournal, Name))
		},
	} {
		wg.Go(func() {
			if err := loop(ctx); err != nil {
				cancel(err)
			}
		})
	}
	env.Ready()
	<-ctx.Done()
	wg.Wait()
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
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
	r.appended = counter("factsync.receipts.appended", "facts appended to the receipts log")
	r.checkpoints = counter("factsync.receipts.checkpoints", "checkpoints signed")
	r.malformed = counter("factsync.receipts.malformed", "JOURNAL messages that are not an accepted fact and were skipped")
	r.forks = counter("factsync.receipts.forks", "ALERT: forks detected, a watched peer signed two inconsistent checkpoints")
	r.cosigned = counter("factsync.receipts.cosigned", "checkpoints of watched peers verified consistent and co-signed")
	return errors.Join(errs...)
}

func (r *run) logger() *slog.Logger {
	if r.env.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.env.Log
}

// consume appends JOURNAL to the log in batches: it takes what has arrived
// (up to BatchSize), appends it with one fsync, and only then acks. A crash
// before the ack redelivers the batch, and the log's FactID index drops
// whatever was already appended.
func (r *run) consume(ctx context.Context, cons jetstream.Consumer) error {
	iter, err := cons.Messages(jetstream.PullMaxMessages(2 * r.cfg.BatchSize))
	if err != nil {
		return fmt.Errorf("receipts: consume JOURNAL: %w", err)
	}
	msgs := make(chan jetstream.Msg)
	go func() {
		defer close(msgs)
		for {
			m, err := iter.Next()
			if err != nil {
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		iter.Stop()
		for range msgs { // unblock the reader; unacked messages are redelivered
		}
	}()
	batch := make([]jetstream.Msg, 0, r.cfg.BatchSize)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-msgs:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("receipts: the JOURNAL consumer stopped delivering")
			}
			batch = append(batch, m)
		}
		batch = bus.TakeReady(batch, msgs, cap(batch))
		if err := r.appendBatch(ctx, batch); err != nil {
			return err
		}
	}
}

// appendBatch appends the facts in batch and acks every message of it once
// they are durable.
func (r *run) appendBatch(ctx context.Context, batch []jetstream.Msg) error {
	leaves := make([]Leaf, 0, len(batch))
	sources := make([]jetstream.Msg, 0, len(batch))
	for _, m := range batch {
		leaf, err := leafOf(m)
		if err != nil {
			// The guard wrote something that is not an accepted fact. It can
			// never become one, so skip it rather than block the log.
			r.logger().Error("receipts: skipping a JOURNAL message that is not an accepted fact", "subject", m.Subject(), "err", err)
			r.malformed.Add(ctx, 1)
			_ = m.Term()
			continue
		}
		leaves, sources = append(leaves, leaf), append(sources, m)
	}
	spans := r.appendSpans(ctx, sources, leaves)
	n, err := r.log.Append(leaves)
	endSpans(spans, err)
	if err != nil {
		return fmt.Errorf("receipts: append to log: %w", err)
	}
	r.appended.Add(ctx, int64(n))
	for _, m := range batch {
		_ = m.Ack()
	}
	size, _ := r.log.Size()
	if last := r.log.LastCheckpoint(); last == nil || size-last.Size >= int64(r.cfg.CheckpointEvery) {
		select {
		case r.checkpointDue <- struct{}{}:
		default:
		}
	}
	return nil
}

// leafOf reads the fact of a JOURNAL message. The FactID is recomputed
// from the bytes rather than taken from Nats-Msg-Id: the bytes are the
// fact's identity.
func leafOf(m jetstream.Msg) (Leaf, error) {
	addr, err := events.ParseJournalSubject(m.Subject())
	if err != nil {
		return Leaf{}, err
	}
	f, err := events.DecodeFact(m.Data())
	if err != nil {
		return Leaf{}, err
	}
	if f.Authority != addr.Authority {
		return Leaf{}, events.Errorf(events.ReasonMalformed, "fact %s of authority %s is on the journal subject of %s", f.ID, f.Authority, addr.Authority)
	}
	return Leaf{Fact: f.ID, Authority: f.Authority}, nil
}

// checkpointLoop signs a checkpoint every CheckpointInterval, or sooner
// when CheckpointEvery facts wait, if the log grew.
func (r *run) checkpointLoop(ctx context.Context) error {
	ticker := r.env.Clock.NewTicker(r.cfg.CheckpointInterval)
	defer ticker.Stop()
	for {
		if err := r.checkpoint(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		case <-r.checkpointDue:
		}
	}
}

// checkpoint signs a checkpoint if the log grew and publishes the last
// signed one if RECEIPTS does not have it yet (a crash may have come
// between storing and publishing it). A refusal to sign is fatal.
func (r *run) checkpoint(ctx context.Context) error {
	signed, err := r.log.SignCheckpoint(r.env.PeerKey)
	if err != nil {
		return err
	}
	if signed != nil {
		r.checkpoints.Add(ctx, 1)
	}
	last := r.log.LastCheckpoint()
	r.mu.Lock()
	defer r.mu.Unlock()
	if last == nil || last.Size == r.published {
		return nil
	}
	id := fmt.Sprintf("checkpoint:%d:%x", last.Size, last.Root[:8])
	if _, err := r.env.JS.Publish(ctx, events.CheckpointSubject(r.peer), last.Note, jetstream.WithMsgID(id)); err != nil {
		r.logger().Warn("receipts: publish checkpoint; retrying at the next tick", "size", last.Size, "err", err)
		return nil
	}
	r.published = last.Size
	return nil
}

// publishEvent publishes a witness event to this peer's RECEIPTS stream.
func (r *run) publishEvent(ctx context.Context, subject, msgID string, body []byte) error {
	_, err := r.env.JS.Publish(ctx, subject, body, jetstream.WithMsgID(msgID))
	return err
}

func peerAttr(peer events.PeerID) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("peer", string(peer)))
}
