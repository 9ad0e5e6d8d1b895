package natsbackend

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// publisher sends signed facts to INGRESS. Callers enqueue their facts and
// wait; each of a few workers takes everything waiting (up to the batch
// limits) and publishes it as one FactBatch, so concurrent writers share
// batches and fsyncs, and several batches are in flight at once.
type publisher struct {
	js      jetstream.JetStream
	signer  *sdk.Signer
	workers int
	queue   chan *publishJob
	tracer  trace.Tracer
}

type publishJob struct {
	ctx   context.Context
	facts []*events.Fact
	done  chan error
}

func newPublisher(js jetstream.JetStream, signer *sdk.Signer, workers int, tracer trace.Tracer) *publisher {
	return &publisher{js: js, signer: signer, workers: workers, tracer: tracer, queue: make(chan *publishJob, 4*events.MaxBatchFacts)}
}

// publish stores facts in INGRESS, in as few batches as the limits allow.
func (p *publisher) publish(ctx context.Context, facts []*events.Fact) error {
	job := &publishJob{ctx: ctx, facts: facts, done: make(chan error, 1)}
	select {
	case p.queue <- job:
	case <-ctx.Done():
		return events.Wrap(events.ReasonUnavailable, ctx.Err(), "write abandoned before publishing")
	}
	select {
	case err := <-job.done:
		return err
	case <-ctx.Done():
		return events.Wrap(events.ReasonUnavailable, ctx.Err(), "write abandoned while publishing; it may still be stored")
	}
}

func (p *publisher) run(ctx context.Context) {
	done := make(chan struct{})
	for range p.workers {
		go func() {
			defer func() { done <- struct{}{} }()
			p.work(ctx)
		}()
	}
	for range p.workers {
		<-done
	}
}

// factFraming is headroom for the protobuf framing of each fact when
// sizing a batch against events.MaxIngressMessage.
const factFraming = 16

func (p *publisher) work(ctx context.Context) {
	for {
		var first *publishJob
		select {
		case first = <-p.queue:
		case <-ctx.Done():
			return
		}
		jobs := []*publishJob{first}
		n, size := len(first.facts), p.sizeOf(first.facts)
	gather:
		for n < events.MaxBatchFacts {
			select {
			case j := <-p.queue:
				js := p.sizeOf(j.facts)
				if n+len(j.facts) > events.MaxBatchFacts || size+js > events.MaxIngressMessage-len(p.signer.Token())-1024 {
					err := p.send(ctx, []context.Context{j.ctx}, j.facts)
					j.done <- err
					continue
				}
				jobs = append(jobs, j)
				n, size = n+len(j.facts), size+js
			default:
				break gather
			}
		}
		var facts []*events.Fact
		callers := make([]context.Context, len(jobs))
		for i, j := range jobs {
			facts = append(facts, j.facts...)
			callers[i] = j.ctx
		}
		err := p.send(ctx, callers, facts)
		for _, j := range jobs {
			j.done <- err
		}
	}
}

func (p *publisher) sizeOf(facts []*events.Fact) int {
	n := 0
	for _, f := range facts {
		n += len(f.Body) + len(f.Signature) + factFraming
	}
	return n
}

// send publishes facts as one or more batches. Each batch's Nats-Msg-Id is
// the hash of its fact ids, so a publish retried after a lost ack is
// stored once; JetStream's publish retries on "no responders" while the
// stream is starting. callers are the contexts of the writes whose facts
// these are: the first one's trace continues through the batch, the
// others are linked to it.
func (p *publisher) send(ctx context.Context, callers []context.Context, facts []*events.Fact) error {
	for start := 0; start < len(facts); {
		end, size := start, 0
		for end < len(facts) && end-start < events.MaxBatchFacts {
			s := len(facts[end].Body) + len(facts[end].Signature) + factFraming
			if end > start && size+s > events.MaxIngressMessage-len(p.signer.Token())-1024 {
				break
			}
			size += s
			end++
		}
		if err := p.sendBatch(ctx, callers, facts[start:end]); err != nil {
			return err
		}
		start = end
	}
	return nil
}

func (p *publisher) sendBatch(ctx context.Context, callers []context.Context, facts []*events.Fact) (err error) {
	subject := events.IngressFactSubject(p.signer.Authority())
	ctx, span := p.startSpan(ctx, callers, subject, facts)
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	body, err := proto.Marshal(p.signer.Batch(facts))
	if err != nil {
		return events.Wrap(events.ReasonInternal, err, "encode fact batch")
	}
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(events.HeaderMsgID, batchID(facts))
	bus.InjectTrace(ctx, msg.Header)
	if _, err := p.js.PublishMsg(ctx, msg, jetstream.WithRetryAttempts(5)); err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "publish fact batch to INGRESS")
	}
	return nil
}

// startSpan starts the producer span of one INGRESS batch. It is a child
// of the first caller's span, linked to the other callers', and keeps the
// worker's ctx for cancellation.
func (p *publisher) startSpan(ctx context.Context, callers []context.Context, subject string, facts []*events.Fact) (context.Context, trace.Span) {
	var links []trace.Link
	for _, c := range callers[1:] {
		if sc := trace.SpanContextFromContext(c); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "nats"),
		attribute.String("messaging.operation.type", "send"),
		attribute.String("messaging.destination.name", subject),
		events.AttrAuthority.String(string(p.signer.Authority())),
		attribute.Int("messaging.batch.message_count", len(facts)),
	}
	if len(facts) == 1 {
		attrs = append(attrs, events.FactAttributes(facts[0])...)
	}
	parent := ctx
	if len(callers) > 0 {
		parent = trace.ContextWithSpanContext(ctx, trace.SpanContextFromContext(callers[0]))
	}
	return p.tracer.Start(parent, "send "+events.IngressPrefix,
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithLinks(links...), trace.WithAttributes(attrs...))
}

// batchID names a batch by its facts: hex SHA-256 of their ids in order.
func batchID(facts []*events.Fact) string {
	h := sha256.New()
	for _, f := range facts {
		h.Write(f.ID[:])
	}
	return "batch:" + hex.EncodeToString(h.Sum(nil))
}
