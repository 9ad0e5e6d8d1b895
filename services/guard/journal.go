package guard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream's atomic batch headers (nats-server >= 2.12). nats.go v1.55 has
// no helper for atomic publish, so the guard sets them itself.
const (
	headerBatchID     = "Nats-Batch-Id"
	headerBatchSeq    = "Nats-Batch-Sequence"
	headerBatchCommit = "Nats-Batch-Commit"
)

// errCodeBatchDuplicate is JetStream's err_code for an atomic batch that
// contains a Nats-Msg-Id still in the stream's dedup window. The server
// rejects the whole batch, so a redelivered INGRESS message whose facts are
// partly in JOURNAL already can never commit as a batch again.
const errCodeBatchDuplicate = 10201

// maxAtomicBatch stays under nats-server's default limit of 1000 messages
// per atomic batch.
const maxAtomicBatch = 1000

// journalWriter publishes accepted facts, and the tokens they cite, to
// JOURNAL. Each call commits as few atomic batches as the size limit
// allows, so one fsync covers many facts.
type journalWriter struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	journal  jetstream.Stream
	maxBatch int

	mu sync.Mutex
	// storedTokens are token hashes known to be in JOURNAL. A token
	// message repeated within the dedup window would fail the whole
	// atomic batch, so a token is sent only until it is known stored.
	storedTokens map[string]struct{}
}

// journalStats says how a write went, for tests and metrics.
type journalStats struct {
	batches  int // atomic batches committed
	fallback int // messages published one at a time after a 10201
}

func newJournalWriter(nc *nats.Conn, js jetstream.JetStream, journal jetstream.Stream, maxBatch int) *journalWriter {
	if maxBatch <= 0 || maxBatch > maxAtomicBatch {
		maxBatch = maxAtomicBatch
	}
	return &journalWriter{nc: nc, js: js, journal: journal, maxBatch: maxBatch, storedTokens: map[string]struct{}{}}
}

// journalEntry is an accepted fact with the trace context (W3C headers) of
// the INGRESS message that carried it, so the trace continues in JOURNAL.
type journalEntry struct {
	fact  *events.Fact
	trace nats.Header
}

// write stores the facts and the tokens they cite in JOURNAL and returns
// once JOURNAL has acknowledged all of them. Nats-Msg-Id is the FactID (or
// "token:"+hash), so a repeat is stored once.
func (w *journalWriter) write(ctx context.Context, entries []journalEntry, tokens map[string][]byte) (journalStats, error) {
	var stats journalStats
	var msgs []*nats.Msg
	var newTokens []string
	for hash, token := range tokens {
		first := firstCiting(entries, hash)
		if first == nil || w.tokenStored(ctx, first.fact.Authority, hash) {
			continue
		}
		newTokens = append(newTokens, hash)
		msgs = append(msgs, journalMsg(events.TokenSubject(first.fact.Authority, hash), "token:"+hash, token, first.trace))
	}
	seen := make(map[events.FactID]bool, len(entries))
	for _, e := range entries {
		if seen[e.fact.ID] {
			continue // a duplicate id inside one batch fails the whole batch
		}
		seen[e.fact.ID] = true
		msgs = append(msgs, journalMsg(events.JournalSubject(e.fact.Authority, e.fact.Collection()), e.fact.ID.String(), e.fact.Marshal(), e.trace))
	}
	for start := 0; start < len(msgs); start += w.maxBatch {
		chunk := msgs[start:min(start+w.maxBatch, len(msgs))]
		err := w.publishAtomic(ctx, chunk)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeBatchDuplicate {
			err = w.publishEach(ctx, chunk)
			stats.fallback += len(chunk)
		} else if err == nil {
			stats.batches++
		}
		if err != nil {
			return stats, err
		}
	}
	w.mu.Lock()
	for _, hash := range newTokens {
		if len(w.storedTokens) >= 100000 {
			clear(w.storedTokens)
		}
		w.storedTokens[hash] = struct{}{}
	}
	w.mu.Unlock()
	return stats, nil
}

// dedupMargin allows for the guard's clock and the server's to differ
// when the guard judges whether JOURNAL's dedup window may have passed.
const dedupMargin = time.Minute

// mayOutliveDedup reports whether the facts of an INGRESS message may
// have been stored in JOURNAL longer ago than JOURNAL's dedup window, so
// that storing them again would not be recognised as a repeat. Only a
// redelivered message can have been written before, and only after it
// arrived in INGRESS.
func mayOutliveDedup(at delivery, now time.Time) bool {
	return at.attempt > 1 && !at.arrived.IsZero() && now.Sub(at.arrived) >= events.DedupWindow-dedupMargin
}

// dropStored returns entries without those of suspect (FactIDs) that
// JOURNAL already holds, reading the message ids of what JOURNAL stored
// on the suspects' subjects since `since`. It is the check for a fact
// redelivered after JOURNAL's dedup window, which the Nats-Msg-Id no
// longer catches (docs/guard.md, "Redelivery after the dedup window").
// Its cost is one pass over those subjects' messages since `since`.
func (w *journalWriter) dropStored(ctx context.Context, entries []journalEntry, suspect map[events.FactID]bool, since time.Time) ([]journalEntry, int, error) {
	subjects := map[string]bool{}
	for _, e := range entries {
		if suspect[e.fact.ID] {
			subjects[events.JournalSubject(e.fact.Authority, e.fact.Collection())] = true
		}
	}
	if len(subjects) == 0 {
		return entries, 0, nil
	}
	stored := map[string]bool{}
	err := bus.ScanWith(ctx, w.js, events.StreamJournal, jetstream.OrderedConsumerConfig{
		FilterSubjects: slices.Sorted(maps.Keys(subjects)),
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &since,
		HeadersOnly:    true,
	}, func(m jetstream.Msg) error {
		stored[factIDOfMsgID(m.Headers().Get(events.HeaderMsgID))] = true
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("guard: read JOURNAL for facts stored before the dedup window: %w", err)
	}
	kept := entries[:0:0]
	for _, e := range entries {
		if !suspect[e.fact.ID] || !stored[e.fact.ID.String()] {
			kept = append(kept, e)
		}
	}
	return kept, len(entries) - len(kept), nil
}

// factIDOfMsgID returns the hex FactID a JOURNAL fact message is named
// by: its Nats-Msg-Id is the FactID, or, for a fact a prune wrote again
// (prune.go), ends in ":" and the FactID.
func factIDOfMsgID(id string) string {
	return id[strings.LastIndexByte(id, ':')+1:]
}

func firstCiting(entries []journalEntry, tokenHash string) *journalEntry {
	for i := range entries {
		if entries[i].fact.TokenHash() == tokenHash {
			return &entries[i]
		}
	}
	return nil
}

// tokenStored reports whether the token is known to be in JOURNAL, asking
// the stream (a direct get by subject) the first time this guard sees it.
func (w *journalWriter) tokenStored(ctx context.Context, auth events.AuthorityID, hash string) bool {
	w.mu.Lock()
	_, ok := w.storedTokens[hash]
	w.mu.Unlock()
	if ok {
		return true
	}
	if _, err := w.journal.GetLastMsgForSubject(ctx, events.TokenSubject(auth, hash)); err != nil {
		return false
	}
	w.mu.Lock()
	w.storedTokens[hash] = struct{}{}
	w.mu.Unlock()
	return true
}

func journalMsg(subject, msgID string, data []byte, trace nats.Header) *nats.Msg {
	m := nats.NewMsg(subject)
	for k, v := range trace {
		m.Header[k] = v
	}
	m.Header.Set(events.HeaderMsgID, msgID)
	m.Data = data
	return m
}

// publishAtomic commits msgs as one JetStream atomic batch: every message
// but the last is published without waiting; the last carries the commit
// header and its reply is the batch's acknowledgement.
func (w *journalWriter) publishAtomic(ctx context.Context, msgs []*nats.Msg) error {
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	for i, m := range msgs {
		m.Header.Set(headerBatchID, id)
		m.Header.Set(headerBatchSeq, strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := w.nc.PublishMsg(m); err != nil {
				return fmt.Errorf("guard: publish to JOURNAL: %w", err)
			}
		}
	}
	commit := msgs[len(msgs)-1]
	commit.Header.Set(headerBatchCommit, "1")
	reply, err := w.nc.RequestMsgWithContext(ctx, commit)
	if err != nil {
		return fmt.Errorf("guard: commit batch to JOURNAL: %w", err)
	}
	var ack struct {
		Error *jetstream.APIError `json:"error"`
		Count int                 `json:"count"`
	}
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return fmt.Errorf("guard: JOURNAL's batch ack %q: %w", reply.Data, err)
	}
	if ack.Error != nil {
		return ack.Error
	}
	if ack.Count != len(msgs) {
		return fmt.Errorf("guard: JOURNAL committed %d of %d messages", ack.Count, len(msgs))
	}
	return nil
}

// publishEach publishes msgs one by one (pipelined) without batch headers.
// JetStream acknowledges a message whose Nats-Msg-Id it already holds as a
// duplicate without storing it again, which is what a redelivered batch
// needs.
func (w *journalWriter) publishEach(ctx context.Context, msgs []*nats.Msg) error {
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		m.Header.Del(headerBatchID)
		m.Header.Del(headerBatchSeq)
		m.Header.Del(headerBatchCommit)
		f, err := w.js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("guard: publish to JOURNAL: %w", err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("guard: publish %s to JOURNAL: %w", f.Msg().Header.Get(events.HeaderMsgID), err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
