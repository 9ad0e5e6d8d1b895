package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// MetadataSubject is the watermill metadata key under which a consumed
// message carries the NATS subject it was published to. Handlers that
// subscribe to a wildcard (fs.journal.>) read the authority and collection
// from it.
const MetadataSubject = "Fs-Subject"

const instrumentationName = "github.com/factsync/factsync/shared/bus"

// RouterConfig configures a watermill router over JetStream for one service.
type RouterConfig struct {
	// Service names the router's durable consumers and its poison subject.
	Service string
	// Conn is the service's connection. The router publishes on it and
	// opens one sibling connection (same options) per handler, because a
	// watermill-nats subscriber drains its connection when it closes.
	Conn *nats.Conn
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Tracer and Meter default to the otel globals.
	Tracer trace.Tracer
	Meter  metric.Meter
	// AckWait is how long JetStream waits for an ack before redelivering,
	// and how long a handler may take. Default 30 s.
	AckWait time.Duration
	// MaxRetries is how many times a failing handler is retried in process
	// before the message goes to the poison queue. Default 3.
	MaxRetries int
	// RetryInterval is the first retry's delay; it doubles up to 5 s.
	// Default 100 ms.
	RetryInterval time.Duration
	// CloseTimeout bounds how long Run waits for in-flight handlers when
	// the context is cancelled. Default 10 s.
	CloseTimeout time.Duration
}

func (c *RouterConfig) setDefaults() error {
	if c.Conn == nil {
		return errors.New("bus: router needs a NATS connection")
	}
	if err := events.CheckName("service", c.Service); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Tracer == nil {
		c.Tracer = otel.Tracer(instrumentationName)
	}
	if c.Meter == nil {
		c.Meter = otel.Meter(instrumentationName)
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxRetries <= 0 {
		c.MaxRetries = 3
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = 100 * time.Millisecond
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 10 * time.Second
	}
	return nil
}

// HandlerFunc handles one message. Returning nil acks it. An error retries
// it, and after the retries sends it to the poison queue and acks it. The
// message's context carries the consumer span, a child of the producer's.
type HandlerFunc func(msg *message.Message) error

// Router consumes JetStream subjects through watermill with durable,
// explicit-ack consumers, retries, a poison queue and trace propagation.
type Router struct {
	cfg       RouterConfig
	log       watermill.LoggerAdapter
	router    *message.Router
	publisher *Publisher
	metrics   consumerMetrics

	mu          sync.Mutex
	subscribers []*subscriber
}

type subscriber struct {
	*wmjs.Subscriber
	conn   *nats.Conn
	closed chan struct{}
}

// NewRouter builds a router and provisions the POISON stream.
func NewRouter(ctx context.Context, cfg RouterConfig) (*Router, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("bus: jetstream for %s: %w", cfg.Service, err)
	}
	if err := Provision(ctx, js, events.PoisonStream()); err != nil {
		return nil, err
	}
	wmLog := watermill.NewSlogLoggerWithLevelMapping(cfg.Logger, map[slog.Level]slog.Level{
		// watermill logs every message at Info; that is debug detail here.
		slog.LevelInfo: slog.LevelDebug,
	})
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.CloseTimeout}, wmLog)
	if err != nil {
		return nil, fmt.Errorf("bus: watermill router: %w", err)
	}
	pub, err := NewPublisher(cfg.Conn, cfg.Tracer, cfg.Meter)
	if err != nil {
		return nil, err
	}
	poison, err := middleware.PoisonQueue(pub, events.PoisonSubject(cfg.Service))
	if err != nil {
		return nil, fmt.Errorf("bus: poison queue: %w", err)
	}
	router.AddMiddleware(
		poison,
		middleware.Retry{
			MaxRetries:      cfg.MaxRetries,
			InitialInterval: cfg.RetryInterval,
			Multiplier:      2,
			MaxInterval:     5 * time.Second,
			Logger:          wmLog,
		}.Middleware,
		middleware.Recoverer,
	)
	metrics, err := newConsumerMetrics(cfg.Meter)
	if err != nil {
		return nil, err
	}
	return &Router{cfg: cfg, log: wmLog, router: router, publisher: pub, metrics: metrics}, nil
}

// Publisher publishes with the router's connection and tracing.
func (r *Router) Publisher() *Publisher { return r.publisher }

// Handle consumes topic (a subject, wildcards allowed, held by exactly one
// stream) with the durable consumer named consumer. The name must be the
// service's name, or start with it and a dash ("journal-changes"), so that
// every consumer on a server says which service owns it. Call Handle
// before Run.
func (r *Router) Handle(consumer, topic string, h HandlerFunc) error {
	if consumer != r.cfg.Service && !strings.HasPrefix(consumer, r.cfg.Service+"-") {
		return fmt.Errorf("bus: consumer %q of service %s must be named %q or %q", consumer, r.cfg.Service, r.cfg.Service, r.cfg.Service+"-<name>")
	}
	if err := events.CheckName("consumer", consumer); err != nil {
		return err
	}
	opts := r.cfg.Conn.Opts
	opts.Name = consumer
	sub := &subscriber{closed: make(chan struct{})}
	opts.ClosedCB = func(*nats.Conn) { close(sub.closed) }
	conn, err := opts.Connect()
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("connect consumer %s", consumer))
	}
	sub.conn = conn
	wsub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
		Conn:                conn,
		Logger:              r.log.With(watermill.LogFields{"consumer": consumer}),
		AckWaitTimeout:      r.cfg.AckWait,
		ResourceInitializer: durableConsumer(consumer, r.cfg.AckWait),
		NakDelay:            wmjs.NewStaticDelay(time.Second),
		Unmarshaler:         unmarshaler{},
	})
	if err != nil {
		conn.Close()
		return fmt.Errorf("bus: subscriber %s: %w", consumer, err)
	}
	sub.Subscriber = wsub
	r.mu.Lock()
	r.subscribers = append(r.subscribers, sub)
	r.mu.Unlock()
	r.router.AddConsumerHandler(consumer, topic, wsub, message.NoPublishHandlerFunc(r.traced(consumer, topic, h)))
	return nil
}

// Running is closed once every handler is consuming (at once for a router
// without handlers).
func (r *Router) Running() <-chan struct{} {
	if r.idle() {
		c := make(chan struct{})
		close(c)
		return c
	}
	return r.router.Running()
}

func (r *Router) idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.subscribers) == 0
}

// Run consumes until ctx is cancelled, then waits (up to CloseTimeout) for
// in-flight handlers and closes the consumers' connections.
func (r *Router) Run(ctx context.Context) error {
	if r.idle() {
		// watermill's router with no handlers waits for Close, not ctx.
		<-ctx.Done()
		return nil
	}
	err := r.router.Run(ctx)
	if err != nil {
		err = fmt.Errorf("bus: router of %s: %w", r.cfg.Service, err)
	}
	if cerr := r.router.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("bus: close router of %s: %w", r.cfg.Service, cerr))
	}
	r.mu.Lock()
	subs := r.subscribers
	r.mu.Unlock()
	deadline := time.NewTimer(r.cfg.CloseTimeout)
	defer deadline.Stop()
	for _, s := range subs {
		if cerr := s.Close(); cerr != nil && !errors.Is(cerr, nats.ErrConnectionClosed) {
			err = errors.Join(err, cerr)
		}
		select {
		case <-s.closed:
		case <-deadline.C:
			s.conn.Close()
			<-s.closed
		}
	}
	return err
}

// durableConsumer makes watermill bind to a durable, explicit-ack consumer
// on whichever stream holds topic, creating or updating it.
func durableConsumer(name string, ackWait time.Duration) wmjs.ResourceInitializer {
	return func(ctx context.Context, js jetstream.JetStream, topic string) (jetstream.Consumer, func(context.Context, watermill.LoggerAdapter), error) {
		stream, err := js.StreamNameBySubject(ctx, topic)
		if err != nil {
			return nil, nil, fmt.Errorf("no stream holds subject %s (provision it first): %w", topic, err)
		}
		c, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
			Durable:       name,
			FilterSubject: topic,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       ackWait,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("consumer %s on stream %s: %w", name, stream, err)
		}
		return c, nil, nil
	}
}

// unmarshaler turns a JetStream message into a watermill message without
// ever failing: watermill-nats's default rejects repeated headers and then
// dereferences the nil message. Messages published with plain NATS (the
// guard's atomic batches) have no watermill UUID, so the Nats-Msg-Id, or
// else the stream position, names them. Nats-* control headers other than
// Nats-Msg-Id are dropped, since republishing them (to the poison queue)
// would be read as expectations or batch markers.
type unmarshaler struct{}

func (unmarshaler) Unmarshal(msg jetstream.Msg) (*message.Message, error) {
	h := msg.Headers()
	id := h.Get(wmnats.WatermillUUIDHdr)
	if id == "" {
		id = h.Get(nats.MsgIdHdr)
	}
	if id == "" {
		if md, err := msg.Metadata(); err == nil {
			id = fmt.Sprintf("%s:%d", md.Stream, md.Sequence.Stream)
		}
	}
	m := message.NewMessage(id, msg.Data())
	for k, v := range h {
		if len(v) == 0 || k == wmnats.WatermillUUIDHdr || (strings.HasPrefix(k, "Nats-") && k != nats.MsgIdHdr) {
			continue
		}
		m.Metadata.Set(k, v[0])
	}
	m.Metadata.Set(MetadataSubject, msg.Subject())
	return m, nil
}

// traced runs h inside a consumer span that continues the producer's trace
// and records the OTel messaging metrics.
func (r *Router) traced(consumer, topic string, h HandlerFunc) func(*message.Message) error {
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemKey.String("nats"),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingConsumerGroupName(consumer),
		semconv.MessagingDestinationSubscriptionName(topic),
	}
	return func(msg *message.Message) error {
		ctx := Propagator.Extract(msg.Context(), propagation.MapCarrier(msg.Metadata))
		ctx, span := r.cfg.Tracer.Start(ctx, "process "+topic,
			trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(attrs...),
			trace.WithAttributes(semconv.MessagingDestinationName(msg.Metadata.Get(MetadataSubject)), semconv.MessagingMessageID(msg.UUID)))
		defer span.End()
		msg.SetContext(ctx)
		start := time.Now()
		err := h(msg)
		metricAttrs := attrs
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			metricAttrs = append(append([]attribute.KeyValue{}, attrs...), semconv.ErrorTypeKey.String(string(events.ReasonOf(err))))
		}
		set := metric.WithAttributes(metricAttrs...)
		r.metrics.duration.Record(ctx, time.Since(start).Seconds(), set)
		r.metrics.consumed.Add(ctx, 1, set)
		return err
	}
}

type consumerMetrics struct {
	duration metric.Float64Histogram
	consumed metric.Int64Counter
}

func newConsumerMetrics(m metric.Meter) (consumerMetrics, error) {
	duration, err := m.Float64Histogram("messaging.process.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of processing operation."))
	if err != nil {
		return consumerMetrics{}, err
	}
	consumed, err := m.Int64Counter("messaging.client.consumed.messages",
		metric.WithUnit("{message}"), metric.WithDescription("Number of messages that were delivered to the application."))
	return consumerMetrics{duration: duration, consumed: consumed}, err
}

// Publisher is a watermill publisher to JetStream that waits for the
// stream's ack and carries the trace context of each message's context in
// its headers. A message's metadata becomes its NATS headers, so setting
// "Nats-Msg-Id" deduplicates.
type Publisher struct {
	js     *wmjs.Publisher
	tracer trace.Tracer
	sent   metric.Int64Counter
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher publishes on nc, which stays the caller's: Close does not
// close it.
func NewPublisher(nc *nats.Conn, tracer trace.Tracer, meter metric.Meter) (*Publisher, error) {
	if tracer == nil {
		tracer = otel.Tracer(instrumentationName)
	}
	if meter == nil {
		meter = otel.Meter(instrumentationName)
	}
	pub, err := wmjs.NewPublisher(wmjs.PublisherConfig{Conn: nc, Logger: watermill.NopLogger{}})
	if err != nil {
		return nil, fmt.Errorf("bus: watermill publisher: %w", err)
	}
	sent, err := meter.Int64Counter("messaging.client.sent.messages",
		metric.WithUnit("{message}"), metric.WithDescription("Number of messages producer attempted to send to the broker."))
	if err != nil {
		return nil, err
	}
	return &Publisher{js: pub, tracer: tracer, sent: sent}, nil
}

// Publish sends each message to subject topic and waits for JetStream's
// ack. The message's context (msg.SetContext) parents the producer span.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		if err := p.publish(topic, msg); err != nil {
			return err
		}
	}
	return nil
}

func (p *Publisher) publish(topic string, msg *message.Message) error {
	attrs := metric.WithAttributes(semconv.MessagingSystemKey.String("nats"), semconv.MessagingOperationTypeSend, semconv.MessagingDestinationName(topic))
	ctx, span := p.tracer.Start(msg.Context(), "send "+topic,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(semconv.MessagingSystemKey.String("nats"), semconv.MessagingOperationTypeSend,
			semconv.MessagingDestinationName(topic), semconv.MessagingMessageID(msg.UUID)))
	defer span.End()
	Propagator.Inject(ctx, propagation.MapCarrier(msg.Metadata))
	err := p.js.Publish(topic, msg)
	p.sent.Add(ctx, 1, attrs)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return events.Wrap(events.ReasonUnavailable, err, "publish to "+topic)
	}
	return nil
}

// Close releases nothing: the connection belongs to the caller.
func (p *Publisher) Close() error { return nil }
