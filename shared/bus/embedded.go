// Package bus is factsync's plumbing to NATS: the embedded server, client
// connections, stream provisioning, watermill wiring and trace-context
// propagation in message headers.
package bus

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an in-process nats-server with JetStream.
type EmbeddedConfig struct {
	// StoreDir holds JetStream's files. Required: factsync never runs
	// JetStream in memory, because acknowledged facts must survive.
	StoreDir string
	// Host defaults to 127.0.0.1; Port 0 or -1 picks a free port.
	Host string
	Port int
	// ServerName names the server in a cluster; default is generated.
	ServerName string
	// Domain is the JetStream domain; each peer has its own.
	Domain string
	// LazySync turns off fsync before ack. The default (false) syncs every
	// write before acknowledging it: NATS's own default syncs lazily and
	// Jepsen (2025) lost acknowledged writes because of it. Writers batch
	// to amortise the cost (see the guard's atomic batches).
	LazySync bool
	// Configure, when set, edits the options last (users, leafnodes, ...).
	Configure func(*server.Options)
}

// StartEmbedded starts a nats-server with JetStream in this process and
// waits until it accepts connections.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("bus: embedded server needs a store directory")
	}
	opts := &server.Options{
		ServerName:      cfg.ServerName,
		Host:            cfg.Host,
		Port:            cfg.Port,
		JetStream:       true,
		StoreDir:        cfg.StoreDir,
		JetStreamDomain: cfg.Domain,
		SyncAlways:      !cfg.LazySync,
		NoSigs:          true,
		NoLog:           true,
		MaxPayload:      8 << 20,
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	if cfg.Configure != nil {
		cfg.Configure(opts)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: configure embedded nats-server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("bus: embedded nats-server did not become ready within 10s")
	}
	return ns, nil
}
