// Package telemetry sets up OpenTelemetry for a factsync process: a tracer
// provider that exports over OTLP gRPC when a collector is configured, a
// meter provider read by a Prometheus /metrics handler, and the W3C
// propagator. Metric names follow the OTel semantic conventions (dotted,
// with units); the Prometheus exporter renders them as
// messaging_process_duration_seconds and so on.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// EnvOTLPEndpoint is the standard variable that turns on OTLP export.
const EnvOTLPEndpoint = "OTEL_EXPORTER_OTLP_ENDPOINT"

// Config configures Setup.
type Config struct {
	// ServiceName is the OTel service.name of the process ("factsync").
	ServiceName string
	// ServiceVersion is service.version; optional.
	ServiceVersion string
	// OTLPEndpoint (host:port) exports traces over plaintext OTLP gRPC, as
	// `factsync dev --otlp` does for a local collector. When empty, traces
	// are exported only if OTEL_EXPORTER_OTLP_ENDPOINT is set, configured
	// by the standard OTEL_EXPORTER_OTLP_* variables.
	OTLPEndpoint string
	// SpanExporter, when set, receives every span synchronously; tests use
	// tracetest.NewInMemoryExporter.
	SpanExporter sdktrace.SpanExporter
	// Global installs the providers and propagator as the otel globals, for
	// libraries that use them. Tests leave it off so they do not share state.
	Global bool
}

// Telemetry holds a process's providers. Shutdown flushes and stops them.
type Telemetry struct {
	TracerProvider *sdktrace.TracerProvider
	MeterProvider  *sdkmetric.MeterProvider
	Propagator     propagation.TextMapPropagator
	registry       *prometheus.Registry
}

// Setup builds the providers. Call Shutdown when the process ends.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	if cfg.ServiceName == "" {
		return nil, errors.New("telemetry: a service name is required")
	}
	attrs := []resource.Option{
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(cfg.ServiceName)),
	}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(cfg.ServiceVersion)))
	}
	res, err := resource.New(ctx, attrs...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	promExporter, err := otelprom.New(otelprom.WithRegisterer(registry))
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(promExporter))

	traceOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	otlp, err := otlpExporter(ctx, cfg.OTLPEndpoint)
	if err != nil {
		_ = mp.Shutdown(ctx)
		return nil, err
	}
	if otlp != nil {
		traceOpts = append(traceOpts, sdktrace.WithBatcher(otlp))
	}
	if cfg.SpanExporter != nil {
		traceOpts = append(traceOpts, sdktrace.WithSyncer(cfg.SpanExporter))
	}
	tp := sdktrace.NewTracerProvider(traceOpts...)

	t := &Telemetry{
		TracerProvider: tp,
		MeterProvider:  mp,
		Propagator:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		registry:       registry,
	}
	if cfg.Global {
		otel.SetTracerProvider(tp)
		otel.SetMeterProvider(mp)
		otel.SetTextMapPropagator(t.Propagator)
	}
	return t, nil
}

// otlpExporter returns nil when no collector is configured.
func otlpExporter(ctx context.Context, endpoint string) (sdktrace.SpanExporter, error) {
	var opts []otlptracegrpc.Option
	switch {
	case endpoint != "":
		opts = append(opts, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
	case os.Getenv(EnvOTLPEndpoint) == "":
		return nil, nil
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP trace exporter: %w", err)
	}
	return exp, nil
}

// Tracer returns a tracer named after a service or package.
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.TracerProvider.Tracer(name) }

// Meter returns a meter named after a service or package.
func (t *Telemetry) Meter(name string) metric.Meter { return t.MeterProvider.Meter(name) }

// MetricsHandler serves the Prometheus exposition of every metric, plus Go
// runtime and process metrics.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes pending spans and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	return errors.Join(t.TracerProvider.Shutdown(ctx), t.MeterProvider.Shutdown(ctx))
}
