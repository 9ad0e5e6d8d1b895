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
	"sync/atomic"
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
	// CheckpointWait is how long the writer collects appended facts
	// before it signs one checkpoint of them: once a fact that no
	// checkpoint covers has been appended, the writer waits this long,
	// then signs everything appended by then. A fact therefore waits for
	// its receipt at most this long beyond the time to read it from
	// JOURNAL, append it, sign and publish, and the writer signs at most
	// one checkpoint per CheckpointWait. Default 100ms; docs/receipts.md,
	// "Checkpoint cadence", has the reasons and the measured figures. No
	// checkpoint is signed while the log does not grow.
	CheckpointWait time.Duration
	// BatchSize is the most JOURNAL messages appended at once. Default
	// 512.
	BatchSize int
	// Lease is how long the active replica's writer lease lasts without
	// renewal: the longest a dead active replica leaves the log unsigned
	// before a standby takes over. Default DefaultLease.
	Lease time.Duration

	// Witness lists the peers whose checkpoints this peer witnesses.
	Witness []WatchedPeer
	// WitnessInterval is how often watched peers are polled. Default 10s.
	WitnessInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.CheckpointWait <= 0 {
		c.CheckpointWait = 100 * time.Millisecond
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.WitnessInterval <= 0 {
		c.WitnessInterval = 10 * time.Second
	}
	return c
}

// Service is the receipts service.
type Service struct {
	cfg Config

	// beforeCommit is handed to the log; tests use it to crash between
	// syncing the leaves and committing the tree.
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

	uncovered chan struct{} // facts were appended: the writer signs a checkpoint of them
	grown     chan struct{} // the log grew: a published checkpoint may now be adopted
	active    atomic.Bool   // this replica holds the writer lease
	pending   atomic.Uint64 // JOURNAL messages past the last one appended

	appended    metric.Int64Counter
	checkpoints metric.Int64Counter
	malformed   metric.Int64Counter
	forks       metric.Int64Counter
	cosigned    metric.Int64Counter
}

// Run implements service.Service. It resumes the log in env.DataDir,
// follows JOURNAL into it, serves requests, and campaigns for the writer
// lease: while it holds it, it signs checkpoints and witnesses peers
// (writer.go). It returns an error when the log cannot be appended to or
// would fork: carrying on would lose receipts or sign a second history.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	l, err := OpenLog(filepath.Join(env.DataDir, "log"))
	if err != nil {
		return err
	}
	defer l.Close()
	if size, _ := l.Size(); size > 0 && l.Position() == 0 {
		return fmt.Errorf("receipts: the log in %s has %d leaves but no JOURNAL position: it was built before logs followed JOURNAL in order; move it away so the log is rebuilt from JOURNAL", filepath.Join(env.DataDir, "log"), size)
	}
	l.beforeCommit = s.beforeCommit
	r := &run{cfg: s.cfg, env: env, log: l, peer: env.Peer, uncovered: make(chan struct{}, 1), grown: make(chan struct{}, 1)}
	if cut := l.Interrupted(); cut != (Interrupted{}) {
		size, _ := l.Size()
		r.logger().Warn("receipts: dropped the end of an append that stopped before its commit (a crash); appending JOURNAL again from the committed position",
			"leaf_bytes", cut.LeafBytes, "hash_bytes", cut.HashBytes, "size", size, "journal_seq", l.Position())
	}
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
	w, err := r.newWriter(ctx, witnesses)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context) error{
		func(ctx context.Context) error { return r.follow(ctx, journal) },
		w.adoptPublished,
		w.campaign,
		r.observe,
		func(ctx context.Context) error {
			return backlog.Watch(ctx, env.Meter, env.Clock, 0, r.logger(), backlog.Source{
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
	r.appended = counter("factsync.receipts.appended", "facts appended to this replica's copy of the receipts log")
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

// follow appends JOURNAL to the log in stream order, from the position the
// log reflects, in batches: it takes what has arrived (up to BatchSize)
// and appends it, and the position with it. An append does not wait for
// the disk: the log is made durable, position included, when a checkpoint
// is signed or adopted (Log.Sync), so the appends keep up with JOURNAL
// however slow an fsync is. Every replica follows JOURNAL, active or not,
// so a standby's log is warm when it takes over. A crash loses what was
// appended since the last sync; the service then reads JOURNAL again from
// the position synced with it and appends the same facts once.
func (r *run) follow(ctx context.Context, journal jetstream.Stream) error {
	cons, err := journal.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.JournalPrefix + ".>"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    r.log.Position() + 1,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("receipts: JOURNAL consumer: %w", err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(2 * r.cfg.BatchSize))
	if err != nil {
		return fmt.Errorf("receipts: consume JOURNAL: %w", err)
	}
	msgs := bus.Deliver(iter, r.cfg.BatchSize)
	defer msgs.Stop()
	batch := make([]jetstream.Msg, 0, r.cfg.BatchSize)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-msgs.C:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("receipts: the JOURNAL consumer stopped delivering: %w", msgs.Err())
			}
			batch = append(batch, m)
		}
		batch = bus.TakeReady(batch, msgs.C, cap(batch))
		if err := r.appendBatch(ctx, batch); err != nil {
			return err
		}
	}
}

// appendBatch appends the facts in batch, which follows the log's
// position in JOURNAL order.
func (r *run) appendBatch(ctx context.Context, batch []jetstream.Msg) error {
	leaves := make([]Leaf, 0, len(batch))
	sources := make([]jetstream.Msg, 0, len(batch))
	var through uint64
	for _, m := range batch {
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("receipts: JOURNAL message without metadata: %w", err)
		}
		through = meta.Sequence.Stream
		r.pending.Store(meta.NumPending)
		leaf, err := leafOf(m)
		if err != nil {
			// The guard wrote something that is not an accepted fact. It can
			// never become one, so skip it (every replica does) rather than
			// block the log.
			r.logger().Error("receipts: skipping a JOURNAL message that is not an accepted fact", "subject", m.Subject(), "seq", through, "err", err)
			r.malformed.Add(ctx, 1)
			continue
		}
		leaves, sources = append(leaves, leaf), append(sources, m)
	}
	spans := r.appendSpans(ctx, sources, leaves)
	n, err := r.log.AppendThrough(leaves, through)
	endSpans(spans, err)
	if err != nil {
		return fmt.Errorf("receipts: append to log: %w", err)
	}
	r.appended.Add(ctx, int64(n))
	if n > 0 {
		signal(r.grown)
		signal(r.uncovered)
	}
	return nil
}

// signal wakes whoever waits on ch, without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
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

func peerAttr(peer events.PeerID) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("peer", string(peer)))
}
