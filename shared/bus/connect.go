package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
)

// ConnectOptions says how to reach an external NATS. At most one of
// CredsFile and NKeySeedFile may be set; with neither, the connection is
// anonymous (or uses credentials embedded in the URL).
type ConnectOptions struct {
	// Name identifies the connection in the server's monitoring
	// (`nats server report connections`); use the process or service name.
	Name string
	// CredsFile is a NATS user credentials file (JWT plus nkey seed), as
	// written by `nsc` or a NATS operator.
	CredsFile string
	// NKeySeedFile holds a user nkey seed ("SU..."); the server must list
	// its public key as a user.
	NKeySeedFile string
	// Logger receives disconnect, reconnect and async error reports.
	// Default: slog.Default().
	Logger *slog.Logger
	// Extra options are applied last.
	Extra []nats.Option
}

// Reconnection defaults: keep trying for ever, about once a second, so a
// service rides out a NATS restart or a rolling upgrade instead of exiting,
// and buffer a few MiB of publishes meanwhile.
const (
	reconnectWait     = time.Second
	reconnectJitter   = 500 * time.Millisecond
	reconnectBufBytes = 8 << 20
	defaultDialWait   = 5 * time.Second
)

// Connect opens a client connection to the NATS at url. It fails fast, with
// a message naming the file, when a credentials file is missing or
// unreadable, and bounds the first dial by ctx's deadline (or 5 s).
func Connect(ctx context.Context, url string, o ConnectOptions) (*nats.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts, err := o.natsOptions(ctx)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("connect to NATS at %s", url))
	}
	return nc, nil
}

func (o ConnectOptions) natsOptions(ctx context.Context) ([]nats.Option, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	dialWait := defaultDialWait
	if deadline, ok := ctx.Deadline(); ok {
		dialWait = time.Until(deadline)
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.Timeout(dialWait),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.ReconnectJitter(reconnectJitter, reconnectJitter),
		nats.ReconnectBufSize(reconnectBufBytes),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "conn", o.Name, "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "conn", o.Name, "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("nats async error", "conn", o.Name, "subject", subject, "err", err)
		}),
	}
	switch {
	case o.CredsFile != "" && o.NKeySeedFile != "":
		return nil, events.Errorf(events.ReasonMalformed, "give either a NATS creds file or an nkey seed file, not both")
	case o.CredsFile != "":
		if err := readable("NATS creds file", o.CredsFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	case o.NKeySeedFile != "":
		if err := readable("NATS nkey seed file", o.NKeySeedFile); err != nil {
			return nil, err
		}
		nkey, err := nats.NkeyOptionFromSeed(o.NKeySeedFile)
		if err != nil {
			return nil, events.Wrap(events.ReasonMalformed, err, fmt.Sprintf("NATS nkey seed file %s does not hold a user seed", o.NKeySeedFile))
		}
		opts = append(opts, nkey)
	}
	return append(opts, o.Extra...), nil
}

// readable checks a credentials file up front: nats.go reads creds lazily
// at dial time and reports a missing file as an authorization failure,
// which sends operators looking at the server instead of their path.
func readable(what, path string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return events.Errorf(events.ReasonNotFound, "%s %s does not exist", what, path)
		}
		return events.Wrap(events.ReasonMalformed, err, fmt.Sprintf("cannot read %s %s", what, path))
	}
	return f.Close()
}
