// Package bus is factsync's plumbing to NATS: the embedded server, client
// connections, stream provisioning, watermill wiring and trace-context
// propagation in message headers.
package bus

import (
	"errors"
	"fmt"
	"net/url"
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
	// A cluster node needs one that stays the same across restarts: the
	// JetStream cluster knows its peers by name.
	ServerName string
	// Domain is the JetStream domain; each peer has its own.
	Domain string
	// LazySync turns off fsync before ack. The default (false) syncs every
	// write before acknowledging it: NATS's own default syncs lazily and
	// Jepsen (2025) lost acknowledged writes because of it. Writers batch
	// to amortise the cost (see the guard's atomic batches).
	LazySync bool
	// Cluster, when set, makes the server a node of a JetStream cluster
	// linked by routes, so streams can have replicas (R3 on three nodes).
	Cluster *ClusterConfig
	// Configure, when set, edits the options last (users, leafnodes, ...).
	Configure func(*server.Options)
}

// ClusterConfig is one node's part of a JetStream cluster. Every node
// gives the same Name and routes to the others; routes carry no
// credentials, so bind them to a private network (loopback in tests).
type ClusterConfig struct {
	// Name is the cluster's name, the same on every node.
	Name string
	// Host defaults to the server's Host; Port 0 or -1 picks a free port,
	// which a restarted node does not keep: give a fixed one when the
	// other nodes' Routes name it.
	Host string
	Port int
	// Routes are the route URLs of the cluster's nodes
	// ("nats-route://127.0.0.1:6222"). Required: JetStream will not start
	// a cluster node without one. A node may list itself, which the server
	// skips, so every node can be given the same list.
	Routes []string
}

// options turns the cluster config into the server's, checking what a
// node cannot run without.
func (c *ClusterConfig) options(opts *server.Options) error {
	if c.Name == "" {
		return errors.New("bus: a cluster node needs the cluster's name")
	}
	if opts.ServerName == "" {
		return errors.New("bus: a cluster node needs a server name that stays the same across restarts")
	}
	if len(c.Routes) == 0 {
		return errors.New("bus: a cluster node needs the route URLs of the cluster's nodes")
	}
	opts.Cluster = server.ClusterOpts{Name: c.Name, Host: c.Host, Port: c.Port}
	if opts.Cluster.Host == "" {
		opts.Cluster.Host = opts.Host
	}
	if opts.Cluster.Port == 0 {
		opts.Cluster.Port = server.RANDOM_PORT
	}
	for _, r := range c.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return fmt.Errorf("bus: cluster route %q is not a URL like nats-route://host:port", r)
		}
		opts.Routes = append(opts.Routes, u)
	}
	return nil
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
	if cfg.Cluster != nil {
		if err := cfg.Cluster.options(opts); err != nil {
			return nil, err
		}
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
