package receipts

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/lease"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// One peer's receipts log has one writer. Every replica of the service
// follows JOURNAL into its own copy of the log, and since the log is a
// function of JOURNAL (log.go), every copy has the same leaves in the
// same order. What only one replica does, the active one that holds the
// writer lease, is to sign checkpoints, publish them to RECEIPTS and
// witness other peers. The RECEIPTS checkpoint subject is the history of
// record:
//
//   - Taking over, the new active replica reads the last checkpoint
//     published there, waits until its own log has reached it, and checks
//     that its tree at that size has that root (Log.Adopt). A log that
//     disagrees never signs: the replica stops with the fork named. It then
//     publishes that checkpoint again under its own fencing token, which
//     fences off the replica it took over from.
//   - Every checkpoint is published with the writer's fencing token in
//     header Fs-Fence and with the RECEIPTS sequence of the last checkpoint
//     it knows as the expected last sequence of the subject. A write that
//     another replica's write overtook is refused by the stream; the
//     writer reads the last checkpoint again, and if its token is higher,
//     steps down (lease.ErrFenced). A replica paused past its lease
//     therefore cannot publish once its successor has.
//   - Standbys adopt every published checkpoint once their log reaches it,
//     so they serve the same receipts and proofs as the active replica.
const (
	// DefaultLease is how long the writer lease lasts without renewal.
	DefaultLease = 10 * time.Second
	// WriterBucket is the KV bucket of the writer lease.
	WriterBucket = "receipts_writer"
	writerKey    = "writer"
	// retryInterval is how often the writer tries again to publish a
	// checkpoint whose publish failed, and how often a new writer looks
	// whether its log has reached the last published checkpoint.
	retryInterval = time.Second
)

// writer is a replica's part in the writer lease.
type writer struct {
	*run
	keeper    *lease.Keeper
	receipts  jetstream.Stream
	witnesses []*Witness
}

func (r *run) newWriter(ctx context.Context, witnesses []*Witness) (*writer, error) {
	receipts, err := r.env.JS.Stream(ctx, events.StreamReceipts)
	if err != nil {
		return nil, fmt.Errorf("receipts: open RECEIPTS: %w", err)
	}
	info, err := receipts.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("receipts: read RECEIPTS info: %w", err)
	}
	kvs, err := bus.ProvisionKV(ctx, r.env.JS, jetstream.KeyValueConfig{
		Bucket:      WriterBucket,
		Description: "the receipts writer lease: which replica signs this peer's checkpoints; the revision is the fencing token",
		Storage:     jetstream.FileStorage,
		History:     1,
		Replicas:    info.Config.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("receipts: %w", err)
	}
	holder := string(r.peer) + "/" + nuid.Next()
	return &writer{run: r, keeper: lease.NewKeeper(kvs[0], holder, r.cfg.Lease, r.env.Clock), receipts: receipts, witnesses: witnesses}, nil
}

// campaign stands by until this replica holds the writer lease, writes
// while it does, and stands by again when it loses it.
func (w *writer) campaign(ctx context.Context) error {
	return w.keeper.Campaign(ctx, writerKey, w.logger(), w.write)
}

func (w *writer) pub() ed25519.PublicKey { return w.env.PeerKey.Public().(ed25519.PublicKey) }

// term is one tenure as the active replica.
type term struct {
	*writer
	fence     *lease.Term
	lastSeq   uint64 // RECEIPTS sequence of the last checkpoint on the subject, 0 for none
	published int64  // size of the last checkpoint this term published, -1 before
}

// write is the active replica's work: take over the published history,
// then sign and publish checkpoints and witness peers until ctx ends or
// another replica's write fences this one off.
func (w *writer) write(ctx context.Context, fence *lease.Term) error {
	t := &term{writer: w, fence: fence, published: -1}
	if err := t.takeOver(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	w.active.Store(true)
	defer w.active.Store(false)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context) error{t.checkpointLoop, t.witnessLoop} {
		wg.Go(func() {
			if err := loop(ctx); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// takeOver makes this replica's log extend the last checkpoint published,
// and publishes it again under this term's token.
func (t *term) takeOver(ctx context.Context) error {
	last, err := t.lastPublished(ctx)
	if err != nil || last == nil {
		return err
	}
	ticker := t.env.Clock.NewTicker(retryInterval)
	defer ticker.Stop()
	for {
		err := t.log.Adopt(last.Data, t.pub())
		if err == nil {
			break
		}
		if !errors.Is(err, ErrBehind) {
			return fmt.Errorf("receipts: take over the log at RECEIPTS sequence %d: %w", last.Sequence, err)
		}
		t.logger().Info("receipts: taking over; waiting for the log to reach the last published checkpoint", "seq", last.Sequence)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C():
		}
	}
	c, _ := OpenCheckpoint(last.Data, t.pub()) // Adopt verified it
	return t.publish(ctx, &SignedCheckpoint{Checkpoint: c, Note: last.Data})
}

// lastPublished reads the last checkpoint on the RECEIPTS subject, remembers
// its sequence, and returns lease.ErrFenced if a later writer published it.
// It returns nil when none was ever published.
func (t *term) lastPublished(ctx context.Context) (*jetstream.RawStreamMsg, error) {
	last, err := t.receipts.GetLastMsgForSubject(ctx, events.CheckpointSubject(t.peer))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		t.lastSeq = 0
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("receipts: read the last published checkpoint: %w", err)
	}
	if token := fenceOf(last.Header); token > t.fence.Token() {
		return nil, fmt.Errorf("%w: checkpoint at RECEIPTS sequence %d is under token %d, this replica's is %d", lease.ErrFenced, last.Sequence, token, t.fence.Token())
	}
	t.lastSeq = last.Sequence
	return last, nil
}

func fenceOf(h nats.Header) uint64 {
	token, _ := strconv.ParseUint(h.Get(lease.HeaderToken), 10, 64)
	return token
}

// checkpointLoop signs and publishes checkpoints. Once facts that no
// checkpoint covers have been appended, it waits CheckpointWait for more
// to come, then signs one checkpoint of everything appended by then. A
// publish that failed is tried again every retryInterval.
func (t *term) checkpointLoop(ctx context.Context) error {
	for {
		if err := t.checkpoint(ctx); err != nil {
			return err
		}
		var retry <-chan time.Time
		if last := t.log.LastCheckpoint(); last != nil && last.Size != t.published {
			retry = t.env.Clock.After(retryInterval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-retry:
			continue
		case <-t.uncovered:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.env.Clock.After(t.cfg.CheckpointWait):
		}
	}
}

// checkpoint signs a checkpoint if the log grew and publishes the last
// signed one if this term has not yet (a crash, or a refused publish, may
// have come between signing and publishing). A refusal to sign is fatal.
func (t *term) checkpoint(ctx context.Context) error {
	signed, err := t.log.SignCheckpoint(t.env.PeerKey)
	if err != nil {
		return err
	}
	if signed != nil {
		t.checkpoints.Add(ctx, 1)
	}
	last := t.log.LastCheckpoint()
	if last == nil || last.Size == t.published {
		return nil
	}
	return t.publish(ctx, last)
}

// publish appends c to the RECEIPTS checkpoint subject under this term's
// token, provided the subject's last message is still the one this term
// knows. When another writer's message came in between, it re-reads the
// subject: a higher token fences this replica off; otherwise the message
// is adopted (it must agree with the log) and the publish waits for the
// next round.
func (t *term) publish(ctx context.Context, c *SignedCheckpoint) error {
	token := t.fence.Token()
	m := nats.NewMsg(events.CheckpointSubject(t.peer))
	m.Data = c.Note
	m.Header.Set(lease.HeaderToken, strconv.FormatUint(token, 10))
	id := fmt.Sprintf("checkpoint:%d:%x:%d", c.Size, c.Root[:8], token)
	ack, err := t.env.JS.PublishMsg(ctx, m, jetstream.WithMsgID(id), jetstream.WithExpectLastSequencePerSubject(t.lastSeq))
	if isWrongLastSequence(err) {
		last, err := t.lastPublished(ctx)
		if err != nil || last == nil {
			return err
		}
		if err := t.log.Adopt(last.Data, t.pub()); err != nil && !errors.Is(err, ErrBehind) {
			return fmt.Errorf("receipts: another replica published at RECEIPTS sequence %d: %w", last.Sequence, err)
		}
		t.logger().Warn("receipts: another replica published a checkpoint under a lower token; publishing again", "seq", last.Sequence, "in", retryInterval)
		return nil
	}
	if err != nil {
		t.logger().Warn("receipts: publish checkpoint; retrying", "size", c.Size, "in", retryInterval, "err", err)
		return nil
	}
	t.lastSeq, t.published = ack.Sequence, c.Size
	return nil
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// witnessLoop polls every watched peer each WitnessInterval, publishes
// co-signed checkpoints and fork evidence to this peer's RECEIPTS stream,
// and counts forks in the receipts.forks alert metric.
func (t *term) witnessLoop(ctx context.Context) error {
	if len(t.witnesses) == 0 {
		return nil
	}
	ticker := t.env.Clock.NewTicker(t.cfg.WitnessInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		}
		for i, w := range t.witnesses {
			t.witness(ctx, w, t.cfg.Witness[i].Source)
		}
	}
}

// adoptPublished follows the RECEIPTS checkpoint subject from its last
// message on, and adopts each checkpoint once the log has reached it, so
// a standby answers with the active replica's checkpoints. A checkpoint
// the log disagrees with stops the replica.
func (w *writer) adoptPublished(ctx context.Context) error {
	cons, err := w.receipts.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.CheckpointSubject(w.peer)},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("receipts: follow published checkpoints: %w", err)
	}
	published := make(chan []byte)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case published <- m.Data():
		case <-ctx.Done():
		}
	})
	if err != nil {
		return fmt.Errorf("receipts: follow published checkpoints: %w", err)
	}
	defer cc.Stop()
	var waiting []byte // the newest published checkpoint not adopted yet
	for {
		select {
		case <-ctx.Done():
			return nil
		case waiting = <-published:
		case <-w.grown:
		}
		if waiting == nil {
			continue
		}
		switch err := w.log.Adopt(waiting, w.pub()); {
		case err == nil:
			waiting = nil
		case errors.Is(err, ErrBehind):
		case events.IsReason(err, events.ReasonConflict):
			return err
		default:
			w.logger().Error("receipts: ignoring a message on the checkpoint subject that is not a checkpoint of this peer", "err", err)
			waiting = nil
		}
	}
}

// publishEvent publishes a witness event to this peer's RECEIPTS stream.
func (r *run) publishEvent(ctx context.Context, subject, msgID string, body []byte) error {
	_, err := r.env.JS.Publish(ctx, subject, body, jetstream.WithMsgID(msgID))
	return err
}
