package guard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// retryDelay is how long INGRESS waits before redelivering a message the
// guard could not make durable (JOURNAL or DENIED unavailable).
const retryDelay = time.Second

// leftoverInterval is how often the guard looks for INGRESS messages it
// has acknowledged that are still in the stream (dropAckedLeftovers).
const leftoverInterval = 30 * time.Second

// dropAckedLeftovers removes the INGRESS messages at or below the guard
// consumer's ack floor. The guard acked each of them once JOURNAL or
// DENIED held its decision, and a work queue removes a message when it is
// acked; but after a kill -9 of the server some removals can be lost
// (faults/crash saw 63 of 5,000 messages back in INGRESS after a restart,
// every one of their facts in JOURNAL). Below the ack floor no delivery
// goes back to them, so without this INGRESS never drains. The guard never
// terminates a message (MaxDeliver is unlimited), so everything at or
// below the floor was acked: removing it loses nothing. It returns how
// many messages it removed.
func (g *running) dropAckedLeftovers(ctx context.Context) (uint64, error) {
	cons, err := g.env.JS.Consumer(ctx, events.StreamIngress, Name)
	if err != nil {
		return 0, err
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	floor := ci.AckFloor.Stream
	st, err := g.env.JS.Stream(ctx, events.StreamIngress)
	if err != nil {
		return 0, err
	}
	before, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	if before.State.Msgs == 0 || before.State.FirstSeq > floor {
		return 0, nil // the usual case: nothing acked is left
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSequence(floor+1)); err != nil {
		return 0, err
	}
	after, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return before.State.Msgs - min(after.State.Msgs, before.State.Msgs), nil
}

// dropAckedLeftoversEvery runs dropAckedLeftovers now and then every
// leftoverInterval until ctx ends: a leftover above the ack floor at start
// falls below it once the messages before it are acked.
func (g *running) dropAckedLeftoversEvery(ctx context.Context) {
	t := g.env.Clock.NewTicker(leftoverInterval)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, g.cfg.RequestTimeout)
		n, err := g.dropAckedLeftovers(rctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			g.log.Warn("cannot look for acknowledged messages left in INGRESS", "err", err)
		case n > 0:
			g.log.Warn("removed INGRESS messages the guard had acknowledged but the stream still held (a server crash lost their removal)", "messages", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// ingressLoop drains the guard's INGRESS consumer.
type ingressLoop struct {
	g        *running
	consume  jetstream.ConsumeContext
	msgs     chan jetstream.Msg
	stopping chan struct{}
}

// startIngress creates the durable "guard" consumer (explicit ack) and
// starts pulling from it.
func (g *running) startIngress(ctx context.Context) (*ingressLoop, error) {
	cons, err := g.env.JS.CreateOrUpdateConsumer(ctx, events.StreamIngress, jetstream.ConsumerConfig{
		Durable:       Name,
		Description:   "the guard decides every fact batch",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       g.cfg.AckWait,
		MaxDeliver:    -1, // a message is only ever dropped by being decided
		MaxAckPending: 4 * g.cfg.IngressBatch,
	})
	if err != nil {
		return nil, fmt.Errorf("guard: INGRESS consumer: %w", err)
	}
	l := &ingressLoop{g: g, msgs: make(chan jetstream.Msg, g.cfg.IngressBatch), stopping: make(chan struct{})}
	l.consume, err = cons.Consume(func(m jetstream.Msg) {
		select {
		case l.msgs <- m:
		case <-l.stopping:
			_ = m.Nak() // hand it straight to the next guard
		}
	}, jetstream.PullMaxMessages(g.cfg.IngressBatch))
	if err != nil {
		return nil, fmt.Errorf("guard: consume INGRESS: %w", err)
	}
	return l, nil
}

// run decides INGRESS messages, up to IngressBatch at a time, until ctx
// ends. Messages not yet decided are nak'd so another guard takes them at
// once; a decision cut short by ctx is neither acked nor lost, because
// INGRESS redelivers it and JOURNAL's dedup makes the repeat harmless.
func (l *ingressLoop) run(ctx context.Context) {
	for {
		var group []jetstream.Msg
		select {
		case <-ctx.Done():
			close(l.stopping)
			l.consume.Drain()
			<-l.consume.Closed()
			for {
				select {
				case m := <-l.msgs:
					_ = m.Nak()
				default:
					return
				}
			}
		case m := <-l.msgs:
			group = append(group, m)
		}
		group = bus.TakeReady(group, l.msgs, cap(l.msgs))
		l.g.decide(ctx, group)
	}
}

// decide checks a group of INGRESS messages, makes the outcome durable
// (accepted facts in JOURNAL, denials in DENIED) and only then acks them.
func (g *running) decide(ctx context.Context, group []jetstream.Msg) {
	start := g.env.Clock.Now()
	var (
		accepted []journalEntry
		tokens   = map[string][]byte{}
		denials  []tracedDenial
		spans    []trace.Span
		decided  []jetstream.Msg
		// suspect are accepted facts that may be in JOURNAL already,
		// stored longer ago than its dedup window, from messages that
		// arrived in INGRESS at or after since.
		suspect map[events.FactID]bool
		since   time.Time
	)
	for _, m := range group {
		mctx, span := g.tracer.Start(bus.ExtractTrace(ctx, m.Headers()), "guard.decide",
			trace.WithAttributes(attribute.String("messaging.destination.name", m.Subject())))
		spans = append(spans, span)
		traceHeader := nats.Header{}
		bus.InjectTrace(mctx, traceHeader)

		at := deliveryOf(m)
		v := g.check.check(mctx, m.Subject(), m.Data(), start, at)
		if v.retry != nil {
			if ctx.Err() == nil {
				g.log.Error("cannot decide an INGRESS message; it will be redelivered", "subject", m.Subject(), "err", v.retry)
			}
			span.SetStatus(codes.Error, v.retry.Error())
			_ = m.NakWithDelay(retryDelay)
			continue
		}
		if err := g.prunedFloors.screen(mctx, m.Subject(), &v, start); err != nil {
			if ctx.Err() == nil {
				g.log.Error("cannot check facts against a prune cut; the message will be redelivered", "subject", m.Subject(), "err", err)
			}
			span.SetStatus(codes.Error, err.Error())
			_ = m.NakWithDelay(retryDelay)
			continue
		}
		decided = append(decided, m)
		factTraces, factSpans := g.traceFacts(ctx, mctx, m.Subject(), v)
		spans = append(spans, factSpans...)
		traceOf := func(id string) nats.Header {
			if h, ok := factTraces[id]; ok {
				return h
			}
			return traceHeader
		}
		old := mayOutliveDedup(at, start)
		for _, f := range v.accepted {
			accepted = append(accepted, journalEntry{fact: f, trace: traceOf(f.ID.String())})
			if old {
				if suspect == nil {
					suspect = map[events.FactID]bool{}
				}
				suspect[f.ID] = true
				if since.IsZero() || at.arrived.Before(since) {
					since = at.arrived
				}
			}
		}
		for h, t := range v.tokens {
			tokens[h] = t
		}
		for _, d := range v.denials {
			denials = append(denials, tracedDenial{denial: d, trace: traceOf(d.GetFactId())})
		}
		span.SetAttributes(decisionAttributes(m.Subject(), v)...)
	}
	defer func() {
		for _, span := range spans {
			span.End()
		}
	}()
	retry := func(what string, err error) {
		if ctx.Err() == nil {
			g.log.Error("cannot make decisions durable; INGRESS will redeliver", "step", what, "err", err, "messages", len(group))
		}
		for _, span := range spans {
			span.SetStatus(codes.Error, err.Error())
		}
		for _, m := range decided {
			_ = m.NakWithDelay(retryDelay)
		}
	}
	if len(suspect) > 0 {
		wctx, cancel := context.WithTimeout(ctx, g.cfg.RequestTimeout)
		kept, dropped, err := g.journal.dropStored(wctx, accepted, suspect, since.Add(-dedupMargin))
		cancel()
		if err != nil {
			retry("journal", err)
			return
		}
		if dropped > 0 {
			g.log.Info("facts redelivered after JOURNAL's dedup window were stored already; not storing them again", "facts", dropped)
		}
		accepted = kept
	}
	if len(accepted) > 0 {
		wctx, cancel := context.WithTimeout(ctx, g.cfg.RequestTimeout)
		_, err := g.journal.write(wctx, accepted, tokens)
		cancel()
		if err != nil {
			retry("journal", err)
			return
		}
	}
	dctx, cancel := context.WithTimeout(ctx, g.cfg.RequestTimeout)
	err := g.publishDenials(dctx, denials)
	cancel()
	if err != nil {
		retry("denied", err)
		return
	}
	for _, m := range decided {
		_ = m.Ack()
	}
	reasons := make([]events.Reason, len(denials))
	for i, d := range denials {
		reasons[i] = events.Reason(d.denial.GetReason())
	}
	g.metrics.record(ctx, "fact", len(accepted), reasons, g.env.Clock.Now().Sub(start))
}

// deliveryOf reads a message's arrival time and delivery count from its
// metadata; a message without them counts as a first delivery arriving now.
func deliveryOf(m jetstream.Msg) delivery {
	meta, err := m.Metadata()
	if err != nil {
		return delivery{}
	}
	return delivery{arrived: meta.Timestamp, attempt: meta.NumDelivered}
}

// tracedDenial is a denial with the trace context of its INGRESS message.
type tracedDenial struct {
	denial *eventsv1.Denial
	trace  nats.Header
}

// publishDenials stores denials in DENIED, each once: a redelivered
// message's denials repeat the same Nats-Msg-Id.
func (g *running) publishDenials(ctx context.Context, denials []tracedDenial) error {
	futures := make([]jetstream.PubAckFuture, 0, len(denials))
	for _, td := range denials {
		d := td.denial
		m := nats.NewMsg(events.DeniedSubject(events.Reason(d.GetReason())))
		for k, v := range td.trace {
			m.Header[k] = v
		}
		m.Header.Set(events.HeaderMsgID, denialID(d))
		m.Data, _ = proto.Marshal(d)
		f, err := g.env.JS.PublishMsgAsync(m)
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	g.noticeDenials(denials)
	return nil
}

// noticeDenials tells the writers of each denied fact, on the authority's
// change feed, so an SDK waiting for its write to show fails at once with
// the reason instead of at its visibility timeout. The notice is core
// NATS and best effort: DENIED, already acknowledged, is the record, and
// a writer that misses the notice still times out. It carries no payload;
// the authority it goes to is the one the fact claims, so a forger learns
// nothing it did not send.
func (g *running) noticeDenials(denials []tracedDenial) {
	for _, td := range denials {
		d := td.denial
		fact, err := events.ParseFactID(d.GetFactId())
		if err != nil {
			continue
		}
		auth, err := events.ParseIngressFactSubject(d.GetSubject())
		if err != nil {
			continue
		}
		notice := proto.CloneOf(d)
		notice.Payload = nil
		m := nats.NewMsg(events.DeniedNoticeSubject(auth, fact))
		m.Data, _ = proto.Marshal(notice)
		if err := g.env.Conn.PublishMsg(m); err != nil {
			g.log.Debug("cannot publish a denial notice", "fact", d.GetFactId(), "err", err)
		}
	}
}

func denialID(d *eventsv1.Denial) string {
	if d.GetFactId() != "" {
		return "denied:" + d.GetReason() + ":" + d.GetFactId()
	}
	sum := sha256.Sum256(append([]byte(d.GetSubject()+"\x00"), d.GetPayload()...))
	return "denied:" + d.GetReason() + ":" + hex.EncodeToString(sum[:])
}
