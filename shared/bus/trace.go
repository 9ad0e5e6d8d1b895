package bus

import (
	"context"
	"strings"

	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Propagator is the trace-context format on the bus: W3C traceparent and
// tracestate, plus baggage. It is fixed rather than taken from the otel
// globals so that every message carries the same headers whatever a
// process has installed.
var Propagator propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(
	propagation.TraceContext{}, propagation.Baggage{})

// HeaderCarrier adapts nats.Header to propagation.TextMapCarrier.
//
// propagation.HeaderCarrier is written for net/http: it canonicalises keys
// ("Traceparent"), but nats.Header is case-sensitive, so a header written
// through it is invisible to a consumer that reads "traceparent" as W3C
// spells it. This carrier writes keys exactly as the propagator gives them
// (lower case) and, when reading, falls back to a case-insensitive match so
// it also understands producers that canonicalised.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key, matched exactly, else ignoring case.
func (c HeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range c {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// Set replaces key's values with value, keeping key's case.
func (c HeaderCarrier) Set(key, value string) { c[key] = []string{value} }

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// InjectTrace writes ctx's trace context into h. h must not be nil: use
// nats.NewMsg, or set msg.Header = nats.Header{} first.
func InjectTrace(ctx context.Context, h nats.Header) {
	Propagator.Inject(ctx, HeaderCarrier(h))
}

// ExtractTrace returns ctx carrying the remote trace context found in h, if
// any, so a span started from it continues the producer's trace.
func ExtractTrace(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return Propagator.Extract(ctx, HeaderCarrier(h))
}

// The W3C Trace Context header names, as Propagator writes them.
const (
	headerTraceparent = "traceparent"
	headerTracestate  = "tracestate"
)

// BodyTrace returns ctx's trace context for a message body that carries
// many items of many traces (eventsv1.FactBatch.Traces), or nil when ctx
// has none. Baggage stays behind: an item's trace crosses to other peers,
// the application's baggage should not.
func BodyTrace(ctx context.Context) *eventsv1.TraceContext {
	h := nats.Header{}
	InjectTrace(ctx, h)
	c := HeaderCarrier(h)
	if c.Get(headerTraceparent) == "" {
		return nil
	}
	return &eventsv1.TraceContext{Traceparent: c.Get(headerTraceparent), Tracestate: c.Get(headerTracestate)}
}

// ExtractBodyTrace is ExtractTrace for a trace context carried in a
// message body: ctx carrying tc's remote span context, or ctx unchanged
// when tc is nil, empty or malformed.
func ExtractBodyTrace(ctx context.Context, tc *eventsv1.TraceContext) context.Context {
	if tc.GetTraceparent() == "" {
		return ctx
	}
	h := nats.Header{}
	c := HeaderCarrier(h)
	c.Set(headerTraceparent, tc.GetTraceparent())
	if tc.GetTracestate() != "" {
		c.Set(headerTracestate, tc.GetTracestate())
	}
	return ExtractTrace(ctx, h)
}

// WithoutSpan returns ctx, its deadline and values, without its span: the
// context to extract a carried trace onto, so that an item carrying none
// is not mistaken for one of ctx's trace.
func WithoutSpan(ctx context.Context) context.Context {
	return trace.ContextWithSpanContext(ctx, trace.SpanContext{})
}

// TraceGroup is the items of a batch that belong to one trace.
type TraceGroup struct {
	// Context carries the trace's remote span context; nil for the items
	// without a sampled trace of their own.
	Context context.Context
	// Items are indexes into the batch, in batch order.
	Items []int
}

// GroupByTrace splits a batch of n items (facts of many traces in one
// message) by the trace each belongs to: contextOf(i) carries item i's
// span context, extracted onto WithoutSpan. Groups keep first-appearance
// order. Items whose context is missing, malformed or not sampled have
// nothing to show in a trace of their own, so they form one group with a
// nil Context, which comes first.
func GroupByTrace(n int, contextOf func(i int) context.Context) []TraceGroup {
	type spanKey struct {
		trace trace.TraceID
		span  trace.SpanID
	}
	groups := []TraceGroup{{}}
	index := map[spanKey]int{}
	for i := range n {
		parent := contextOf(i)
		sc := trace.SpanContextFromContext(parent)
		if !sc.IsValid() || !sc.IsSampled() {
			groups[0].Items = append(groups[0].Items, i)
			continue
		}
		key := spanKey{sc.TraceID(), sc.SpanID()}
		g, ok := index[key]
		if !ok {
			g = len(groups)
			index[key] = g
			groups = append(groups, TraceGroup{Context: parent})
		}
		groups[g].Items = append(groups[g].Items, i)
	}
	if len(groups[0].Items) == 0 {
		return groups[1:]
	}
	return groups
}
