package bus

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
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
