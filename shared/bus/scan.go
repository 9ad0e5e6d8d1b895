package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Scan reads every message of stream that matches filters, in stream
// order, as the stream stands when Scan starts (messages stored meanwhile
// may or may not be included), and calls fn for each; an error from fn
// stops the scan and is returned. It reads with an ordered consumer, which
// it deletes when done.
func Scan(ctx context.Context, js jetstream.JetStream, stream string, filters []string, fn func(jetstream.Msg) error) error {
	return ScanFrom(ctx, js, stream, filters, 0, fn)
}

// ScanFrom is Scan from stream sequence from on (from the start when from
// is 0 or 1), for a reader that keeps up with a stream by scanning only
// what it has not read.
func ScanFrom(ctx context.Context, js jetstream.JetStream, stream string, filters []string, from uint64, fn func(jetstream.Msg) error) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: filters, DeliverPolicy: jetstream.DeliverAllPolicy}
	if from > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	return ScanWith(ctx, js, stream, cfg, fn)
}

// ScanWith is Scan with the ordered consumer's configuration given whole,
// for a reader that starts elsewhere (a start time) or reads headers only.
func ScanWith(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.OrderedConsumerConfig, fn func(jetstream.Msg) error) error {
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	// An ordered consumer outlives its reader by minutes unless deleted.
	defer func() { _ = js.DeleteConsumer(context.WithoutCancel(ctx), stream, cons.CachedInfo().Name) }()
	if info.NumPending == 0 {
		return nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read %s: %w", stream, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("read %s: %w", stream, err)
		}
		if err := fn(m); err != nil {
			return err
		}
		if meta.NumPending == 0 {
			return nil
		}
	}
}
