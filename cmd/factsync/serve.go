package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/keys"
	"github.com/factsync/factsync/shared/natsauth"
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
	replicas int

	natsUser, natsPassword, natsUsers string
	// meshInboxPrefix is the reply-subject prefix of the services'
	// connections: the private inbox of this peer's user at a mesh hub,
	// the only replies from other peers the hub lets through.
	meshInboxPrefix string

	ota otaFlags

	// clientAuthorities scopes the embedded server's client user (set by
	// factsync dev to its demo authority).
	clientAuthorities []events.AuthorityID
	// configureNATS, when set, edits the embedded server's options last
	// (factsync dev --peers links each peer to the mesh hub with it).
	configureNATS func(*server.Options)
}

// usersFile is where the embedded server keeps its role users.
func (o *serveOptions) usersFile() string {
	if o.natsUsers != "" {
		return o.natsUsers
	}
	return filepath.Join(o.data, "nats-users.json")
}

// connectOptions picks the NATS identity of a connection: the role's user
// from the users file when there is one, else --nats-user/--nats-password,
// else --creds or --nkey.
func (o *serveOptions) connectOptions(name string, users *embeddedUsers, role natsauth.Role, log *slog.Logger) bus.ConnectOptions {
	co := bus.ConnectOptions{Name: name, CredsFile: o.creds, NKeySeedFile: o.nkey, Logger: log}
	switch {
	case users != nil:
		u := users.Services
		if role == natsauth.RoleGuard {
			u = users.Guard
		}
		co.Extra = []nats.Option{nats.UserInfo(u.Name, u.Password)}
	case o.natsUser != "":
		co.Extra = []nats.Option{nats.UserInfo(o.natsUser, o.natsPassword)}
	}
	if o.meshInboxPrefix != "" && role == natsauth.RoleServices {
		// The services send this peer's requests to other peers
		// (anti-entropy, receipts, snapshot restores).
		co.Extra = append(co.Extra, nats.CustomInboxPrefix(o.meshInboxPrefix))
	}
	return co
}

func (o *serveOptions) addFlags(cmd *cobra.Command, defaultHTTP string) {
	f := cmd.Flags()
	f.StringVar(&o.data, "data", ".factsync", "data directory: embedded NATS store, service state, keys")
	f.StringVar(&o.natsURL, "nats", "", "external NATS URL; empty starts an embedded server")
	f.StringVar(&o.creds, "creds", "", "NATS credentials file for --nats")
	f.StringVar(&o.nkey, "nkey", "", "NATS nkey seed file for --nats")
	f.StringVar(&o.httpAddr, "http", defaultHTTP, "address of /healthz, /readyz and /metrics")
	f.IntVar(&o.natsPort, "nats-port", 4222, "client port of the embedded NATS server; -1 picks a free one")
	f.StringVar(&o.natsHost, "nats-host", "127.0.0.1", "listen address of the embedded NATS server")
	f.StringVar(&o.domain, "domain", "", "JetStream domain of this peer")
	f.StringVar(&o.otlp, "otlp", "", "OTLP gRPC endpoint for traces, e.g. localhost:4317 (default: OTEL_EXPORTER_OTLP_ENDPOINT)")
	f.StringVar(&o.natsUser, "nats-user", "", "NATS user name for --nats")
	f.StringVar(&o.natsPassword, "nats-password", "", "NATS password for --nats")
	f.StringVar(&o.natsUsers, "nats-users", "", "role users file of an embedded server (default DATA/nats-users.json)")
	f.StringVar(&o.meshInboxPrefix, "mesh-inbox-prefix", "", "reply-subject prefix of the services' requests to other peers: the private inbox of this peer's user at the mesh hub (natsauth.InboxPrefix, e.g. _INBOX_peer-0); empty uses _INBOX")
	f.IntVar(&o.replicas, "replicas", 1, "replicas of the streams the services create (3 on a JetStream cluster)")
	o.ota.add(f)
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
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
				what := strings.Join(st.services, ", ")
				if o.natsOnly {
					what = "the embedded NATS server only"
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "factsync: serving %s (NATS %s, status http://%s/readyz)\n",
					what, redactURL(st.clientURL), st.httpAddr())
				return st.wait(cmd.Context())
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
	services   []string
	clientURL  string // for clients of the embedded server, with the client user's credentials
	opsURL     string // for inspecting streams with the nats CLI (the services user)
	embedded   *server.Server
	conns      []*nats.Conn
	status     *http.Server // --nats-only
	statusAddr string
	runner     *runner.Runner
	telemetry  *telemetry.Telemetry
	peer       events.PeerID
	peerKey    ed25519.PublicKey
	log        *slog.Logger
}

func (s *stack) httpAddr() string {
	if s.runner == nil {
		return s.statusAddr
	}
	return s.runner.Addr()
}

// startStack starts the embedded server (unless --nats is given) and the
// named services (all when none are named).
func startStack(ctx context.Context, o *serveOptions, names []string) (_ *stack, err error) {
	all := len(names) == 0 && !o.natsOnly
	if all {
		names = serviceNames()
	}
	built := make([]service.Service, 0, len(names))
	seen := map[string]bool{}
	for _, n := range names {
		build, ok := registry[n]
		if !ok {
			return nil, usageErrorf("unknown service %q; services are %s", n, strings.Join(serviceNames(), ", "))
		}
		if seen[n] {
			return nil, usageErrorf("service %q named twice", n)
		}
		seen[n] = true
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
	st := &stack{log: log}
	for _, svc := range built {
		st.services = append(st.services, svc.Name())
	}
	defer func() {
		if err != nil {
			st.close()
		}
	}()

	peerKey, _, err := keys.LoadOrGenerate(filepath.Join(o.data, "peer.key"), keys.Peer)
	if err != nil {
		return nil, err
	}
	st.peerKey = peerKey.Public().(ed25519.PublicKey)
	st.peer = events.PeerIDOf(st.peerKey)

	url := o.natsURL
	var users *embeddedUsers
	if url == "" {
		u, err := loadOrCreateUsers(o.usersFile())
		if err != nil {
			return nil, err
		}
		users = &u
		if st.embedded, err = startEmbedded(o, u); err != nil {
			return nil, err
		}
		url = st.embedded.ClientURL()
		st.clientURL = u.url(url, u.Client)
		st.opsURL = u.url(url, u.Services)
		if o.natsOnly {
			return st, st.serveNATSStatus(o.httpAddr)
		}
	} else {
		st.clientURL = url
		if u, err := loadUsers(o.usersFile()); err == nil {
			// A service started beside an embedded server (Tilt's local
			// mode) finds the role passwords in the shared data directory.
			users = &u
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}

	// The guard runs as the guard's NATS user, the other services as the
	// services user, so the server enforces that only the guard writes
	// the accepted streams, in one process as across many.
	connFor := map[string]*nats.Conn{}
	var shared *nats.Conn
	for _, svc := range built {
		role := natsauth.RoleServices
		if svc.Name() == "guard" {
			role = natsauth.RoleGuard
		}
		if role == natsauth.RoleServices && shared != nil {
			continue
		}
		nc, err := bus.Connect(ctx, url, o.connectOptions("factsync-"+svc.Name(), users, role, log))
		if err != nil {
			return nil, err
		}
		st.conns = append(st.conns, nc)
		if role == natsauth.RoleGuard {
			connFor[svc.Name()] = nc
		} else {
			shared = nc
		}
	}
	if shared == nil { // only the guard runs
		shared = connFor["guard"]
	}
	st.telemetry, err = telemetry.Setup(ctx, telemetry.Config{ServiceName: "factsync", OTLPEndpoint: o.otlp})
	if err != nil {
		return nil, err
	}
	st.runner, err = runner.Start(ctx, runner.Config{
		Conn:            shared,
		ServiceConns:    connFor,
		StreamReplicas:  o.replicas,
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
func (s *stack) wait(ctx context.Context) error {
	var err error
	if s.runner != nil {
		err = s.runner.Wait()
	} else {
		<-ctx.Done() // --nats-only: run until interrupted
	}
	s.close()
	return err
}

func (s *stack) close() {
	for _, nc := range s.conns {
		_ = nc.Drain()
	}
	if s.status != nil {
		_ = s.status.Close()
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

// serveNATSStatus serves /healthz and /readyz for `serve --nats-only`, so
// Tilt and probes can wait for the embedded server like for a service.
func (s *stack) serveNATSStatus(addr string) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("status listener on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) {
		if !s.embedded.Running() || !s.embedded.JetStreamEnabled() {
			http.Error(w, "nats not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}
	mux.HandleFunc("/healthz", ok)
	mux.HandleFunc("/readyz", ok)
	s.status = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.statusAddr = ln.Addr().String()
	go func() { _ = s.status.Serve(ln) }()
	return nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErrorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
