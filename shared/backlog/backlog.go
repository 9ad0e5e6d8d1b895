// Package backlog reports how far behind its streams a service is: the
// gauge factsync.nats.consumer.pending, the messages a consumer has not yet
// been delivered, per stream and consumer. A service starts Watch beside
// its consumers; it reads each one's count every interval of the injected
// clock and the gauge reports the last reading, so a scrape never waits on
// NATS.
package backlog

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// MetricName is the gauge's OTel name (Prometheus: factsync_nats_consumer_pending).
const MetricName = "factsync.nats.consumer.pending"

// DefaultInterval is how often Watch reads the counts.
const DefaultInterval = 5 * time.Second

// Source is one consumer whose backlog is reported.
type Source struct {
	Stream, Consumer string
	// Pending reads the consumer's count of undelivered messages.
	Pending func(context.Context) (uint64, error)
}

// Durable reads a durable consumer's NumPending from its ConsumerInfo.
func Durable(js jetstream.JetStream, stream, consumer string) Source {
	return Source{Stream: stream, Consumer: consumer, Pending: func(ctx context.Context) (uint64, error) {
		c, err := js.Consumer(ctx, stream, consumer)
		if err != nil {
			return 0, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return 0, err
		}
		return info.NumPending, nil
	}}
}

// Watch registers the gauge on meter and refreshes it every interval
// (DefaultInterval when 0) until ctx ends. A consumer whose count cannot
// be read keeps its last value, and the failure is logged at debug level:
// the service's own consumer loop reports real outages.
func Watch(ctx context.Context, meter metric.Meter, clk clock.Clock, interval time.Duration, log *slog.Logger, sources ...Source) error {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("backlog")
	}
	var (
		mu   sync.Mutex
		last = make([]int64, len(sources))
		seen = make([]bool, len(sources))
	)
	gauge, err := meter.Int64ObservableGauge(MetricName,
		metric.WithUnit("{message}"),
		metric.WithDescription("messages of the stream the consumer has not been delivered yet"))
	if err != nil {
		return err
	}
	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		mu.Lock()
		defer mu.Unlock()
		for i, s := range sources {
			if seen[i] {
				o.ObserveInt64(gauge, last[i], metric.WithAttributes(
					attribute.String("stream", s.Stream), attribute.String("consumer", s.Consumer)))
			}
		}
		return nil
	}, gauge)
	if err != nil {
		return err
	}
	defer func() { _ = reg.Unregister() }()
	ticker := clk.NewTicker(interval)
	defer ticker.Stop()
	for {
		for i, s := range sources {
			n, err := s.Pending(ctx)
			if err != nil {
				if ctx.Err() == nil {
					log.Debug("backlog: cannot read consumer pending count", "stream", s.Stream, "consumer", s.Consumer, "err", err)
				}
				continue
			}
			mu.Lock()
			last[i], seen[i] = int64(n), true
			mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		}
	}
}
