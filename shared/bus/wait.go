package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go/jetstream"
)

// streamPollInterval is how often WaitForStream looks again.
const streamPollInterval = 500 * time.Millisecond

// WaitForStream returns the named stream once it exists. A service that
// reads another service's stream (the journal reads the guard's JOURNAL)
// may start first when each runs as its own process; it waits instead of
// failing, and says what it waits for.
func WaitForStream(ctx context.Context, js jetstream.JetStream, name string, clk clock.Clock, log *slog.Logger) (jetstream.Stream, error) {
	logged := false
	for {
		s, err := js.Stream(ctx, name)
		switch {
		case err == nil:
			return s, nil
		case !errors.Is(err, jetstream.ErrStreamNotFound):
			return nil, fmt.Errorf("open stream %s: %w", name, err)
		case !logged && log != nil:
			log.Info("waiting for stream to be created by its owner", "stream", name)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for stream %s: %w", name, ctx.Err())
		case <-clk.After(streamPollInterval):
		}
	}
}
