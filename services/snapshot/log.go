package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go/jetstream"
)

// eventLog is the SNAPSHOTS stream and the ledger folded from it. Every
// write names the stream sequence its decision was made at, so replicas
// (and the processes of several peers sharing one stream) append one
// linear history: a write decided on a stale ledger is refused by the
// server, and the writer catches up and decides again.
type eventLog struct {
	stream jetstream.Stream
	js     jetstream.JetStream
	log    *slog.Logger

	mu      sync.Mutex
	ledger  *Ledger
	applied uint64 // the last stream sequence folded into ledger
}

func openLog(ctx context.Context, js jetstream.JetStream, ledger *Ledger, log *slog.Logger) (*eventLog, error) {
	stream, err := js.Stream(ctx, events.StreamSnapshots)
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "open the SNAPSHOTS stream")
	}
	l := &eventLog{stream: stream, js: js, log: log, ledger: ledger}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l, l.catchUpLocked(ctx)
}

// catchUpLocked folds what was written since the last fold. l.mu is held.
func (l *eventLog) catchUpLocked(ctx context.Context) error {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "read the SNAPSHOTS stream's state")
	}
	for seq := l.applied + 1; seq <= info.State.LastSeq; seq++ {
		msg, err := l.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("read snapshot event %d", seq))
		}
		if err := l.ledger.ApplyMessage(msg.Subject, msg.Data); err != nil {
			l.log.Error("snapshot: skipping a SNAPSHOTS event the ledger refuses", "seq", seq, "err", err)
		}
		l.applied = seq
	}
	l.applied = max(l.applied, info.State.LastSeq)
	return nil
}

// maxWriteAttempts bounds retries after losing the next sequence to
// another writer.
const maxWriteAttempts = 8

// append writes ev about auth if the ledger, caught up, accepts it. check,
// when set, runs on the caught-up ledger first (and may refuse).
func (l *eventLog) append(ctx context.Context, auth events.AuthorityID, ev events.SnapshotEvent, check func(*Ledger) error) error {
	data, err := events.EncodeSnapshotEvent(ev)
	if err != nil {
		return err
	}
	subject := events.SnapshotEventSubject(ev.Kind, auth)
	l.mu.Lock()
	defer l.mu.Unlock()
	for range maxWriteAttempts {
		if err := l.catchUpLocked(ctx); err != nil {
			return err
		}
		if check != nil {
			if err := check(l.ledger); err != nil {
				return err
			}
		}
		// Apply to a copy first: the ledger must not change unless the
		// write lands.
		trial := l.ledger.clone()
		if err := trial.Apply(auth, ev); err != nil {
			return err
		}
		ack, err := l.js.Publish(ctx, subject, data, jetstream.WithExpectLastSequence(l.applied))
		if isWrongLastSequence(err) {
			continue
		}
		if err != nil {
			return events.Wrap(events.ReasonUnavailable, err, "write to the SNAPSHOTS stream")
		}
		l.ledger, l.applied = trial, ack.Sequence
		return nil
	}
	return events.Errorf(events.ReasonUnavailable, "the SNAPSHOTS stream kept moving under %d attempts to write; retry", maxWriteAttempts)
}

// read runs fn on the caught-up ledger.
func (l *eventLog) read(ctx context.Context, fn func(*Ledger)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.catchUpLocked(ctx)
	fn(l.ledger)
	return err
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
