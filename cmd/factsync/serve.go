package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/keys"
	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/service"
	"github.com/factsync/factsync/shared/telemetry"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
)

// serviceFactory builds one service from the serve options. Each service
// registers itself from its own file (service_<name>.go), so adding a
// service to the binary is one file.
type serviceFactory func(o *serveOptions) (service.Service, error)

var registry = map[string]serviceFactory{}

func registerService(name string, build serviceFactory) { registry[name] = build }

// serviceNames returns the registered services in a fixed order: the guard
// first, since everything else reads what it accepts.
func serviceNames() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if (names[i] == "guard") != (names[j] == "guard") {
			return names[i] == "guard"
		}
		return names[i] < names[j]
	})
	return names
}

// serveOptions are the flags of `factsync serve` (and `factsync dev`).
type serveOptions struct {
	data     string
	natsURL  string
	creds    string
	nkey     string
	httpAddr string
	natsPort int
	natsHost string
	domain   string
	otlp     string
	natsOnly bool
	logLevel string
}

func (o *serveOptions) addFlags(cmd *cobra.Command, defaultHTTP string) {
	f := cmd.Flags()
	f.StringVar(&o.data, "data", envOr("FACTSYNC_DATA", ".factsync"), "data directory: embedded NATS store, service state, keys (env FACTSYNC_DATA)")
	f.StringVar(&o.natsURL, "nats", envOr("FACTSYNC_NATS", ""), "external NATS URL; empty starts an embedded server (env FACTSYNC_NATS)")
	f.StringVar(&o.creds, "creds", envOr("FACTSYNC_CREDS", ""), "NATS credentials file for --nats (env FACTSYNC_CREDS)")
	f.StringVar(&o.nkey, "nkey", envOr("FACTSYNC_NKEY", ""), "NATS nkey seed file for --nats (env FACTSYNC_NKEY)")
	f.StringVar(&o.httpAddr, "http", envOr("FACTSYNC_HTTP", defaultHTTP), "address of /healthz, /readyz and /metrics (env FACTSYNC_HTTP)")
	f.IntVar(&o.natsPort, "nats-port", 4222, "client port of the embedded NATS server; -1 picks a free one")
	f.StringVar(&o.natsHost, "nats-host", "127.0.0.1", "listen address of the embedded NATS server")
	f.StringVar(&o.domain, "domain", envOr("FACTSYNC_DOMAIN", ""), "JetStream domain of this peer")
	f.StringVar(&o.otlp, "otlp", envOr("FACTSYNC_OTLP", ""), "OTLP gRPC endpoint for traces, e.g. localhost:4317 (default: OTEL_EXPORTER_OTLP_ENDPOINT)")
	f.StringVar(&o.logLevel, "log-level", envOr("FACTSYNC_LOG_LEVEL", "info"), "debug, info, warn or error")
}

func init() {
	commands = append(commands, func(g *globals) *cobra.Command {
		o := &serveOptions{}
		cmd := &cobra.Command{
			Use:   "serve [service ...]",
			Short: "Run factsync services",
			Long: `Run factsync services in this process.

With no service named, every service runs. Without --nats an embedded NATS
server with JetStream starts first, storing under --data; with --nats the
named services run against that server, so each can be deployed and scaled
on its own:

  factsync serve                                  # everything, embedded NATS
  factsync serve guard --nats nats://nats:4222    # one service
  factsync serve --nats-only                      # only the embedded NATS (for Tilt)

Services: ` + strings.Join(serviceNames(), ", "),
			RunE: func(cmd *cobra.Command, args []string) error {
				st, err := startStack(cmd.Context(), o, args)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "factsync: serving %s (NATS %s, status http://%s/readyz)\n",
					strings.Join(st.services, ", "), st.clientURL, st.httpAddr())
				return st.wait()
			},
		}
		o.addFlags(cmd, "127.0.0.1:8080")
		cmd.Flags().BoolVar(&o.natsOnly, "nats-only", false, "run only the embedded NATS server, no services")
		return cmd
	})
}

// stack is a running set of services, and the embedded server when there
// is one.
type stack struct {
	services  []string
	clientURL string // for clients of the embedded server, with the client user's credentials
	opsURL    string // for inspecting streams with the nats CLI (the services user)
	embedded  *server.Server
	conns     []*nats.Conn
	runner    *runner.Runner
	telemetry *telemetry.Telemetry
	peer      events.PeerID
	log       *slog.Logger
}

func (s *stack) httpAddr() string {
	if s.runner == nil {
		return ""
	}
	return s.runner.Addr()
}

// startStack starts the embedded server (unless --nats is given) and the
// named services (all when none are named).
func startStack(ctx context.Context, o *serveOptions, names []string) (_ *stack, err error) {
	if len(names) == 0 && !o.natsOnly {
		names = serviceNames()
	}
	built := make([]service.Service, 0, len(names))
	for _, n := range names {
		build, ok := registry[n]
		if !ok {
			return nil, usageErrorf("unknown service %q; services are %s", n, strings.Join(serviceNames(), ", "))
		}
		if slices.Contains(names[:len(built)], n) {
			return nil, usageErrorf("service %q named twice", n)
		}
		svc, err := build(o)
		if err != nil {
			return nil, fmt.Errorf("configure service %s: %w", n, err)
		}
		built = append(built, svc)
	}
	log, err := newLogger(o.logLevel)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	st := &stack{services: names, log: log}
	defer func() {
		if err != nil {
			st.close()
		}
	}()

	peerKey, _, err := keys.LoadOrGenerate(filepath.Join(o.data, "peer.key"), keys.Peer)
	if err != nil {
		return nil, err
	}
	st.peer = events.PeerIDOf(peerKey.Public().(ed25519.PublicKey))

	// Against an external NATS one identity (--creds or --nkey) serves
	// every named service; deployments run the guard under the guard's
	// user and the others under the services user. The embedded server
	// gets one connection per role so the same boundary holds in one
	// process.
	url := o.natsURL
	connect := func(name string, extra ...nats.Option) (*nats.Conn, error) {
		nc, err := bus.Connect(ctx, url, bus.ConnectOptions{Name: name, CredsFile: o.creds, NKeySeedFile: o.nkey, Logger: log, Extra: extra})
		if err != nil {
			return nil, events.Wrap(events.ReasonUnavailable, err, "connect to NATS at "+redactURL(url))
		}
		st.conns = append(st.conns, nc)
		return nc, nil
	}
	var guardConn *nats.Conn
	var servicesAuth []nats.Option
	if url == "" {
		users, err := loadOrCreateUsers(filepath.Join(o.data, "nats-users.json"))
		if err != nil {
			return nil, err
		}
		if st.embedded, err = startEmbedded(o, users); err != nil {
			return nil, err
		}
		url = st.embedded.ClientURL()
		st.clientURL = users.url(url, users.Client)
		st.opsURL = users.url(url, users.Services)
		servicesAuth = []nats.Option{nats.UserInfo(users.Services.Name, users.Services.Password)}
		if slices.Contains(names, "guard") {
			if guardConn, err = connect("factsync-guard", nats.UserInfo(users.Guard.Name, users.Guard.Password)); err != nil {
				return nil, err
			}
		}
	} else {
		st.clientURL = url
	}
	if o.natsOnly {
		return st, nil
	}
	conn, err := connect("factsync-"+strings.Join(names, "-"), servicesAuth...)
	if err != nil {
		return nil, err
	}
	connFor := map[string]*nats.Conn{}
	if guardConn != nil {
		connFor["guard"] = guardConn
	}
	st.telemetry, err = telemetry.Setup(ctx, telemetry.Config{ServiceName: "factsync", OTLPEndpoint: o.otlp})
	if err != nil {
		return nil, err
	}
	st.runner, err = runner.Start(ctx, runner.Config{
		Conn:            conn,
		ServiceConns:    connFor,
		JetStreamDomain: o.domain,
		DataRoot:        filepath.Join(o.data, "services"),
		Peer:            st.peer,
		PeerKey:         peerKey,
		Telemetry:       st.telemetry,
		Logger:          log,
		HTTPAddr:        o.httpAddr,
	}, built...)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// wait blocks until the services stop (on Ctrl-C or a failure), then
// stops the embedded server.
func (s *stack) wait() error {
	var err error
	if s.runner != nil {
		err = s.runner.Wait()
	} else if s.embedded != nil {
		// --nats-only: run until interrupted.
		<-s.stopped()
	}
	s.close()
	return err
}

func (s *stack) stopped() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		s.embedded.WaitForShutdown()
		close(ch)
	}()
	return ch
}

func (s *stack) close() {
	for _, nc := range s.conns {
		_ = nc.Drain()
	}
	if s.telemetry != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.telemetry.Shutdown(ctx)
		cancel()
	}
	if s.embedded != nil {
		s.embedded.Shutdown()
		s.embedded.WaitForShutdown()
	}
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErrorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
