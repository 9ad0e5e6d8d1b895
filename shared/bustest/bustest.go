// Package bustest starts real embedded JetStream servers for tests, in the
// manner of nats-server's RunBasicJetStreamServer: loopback, a random port,
// a t.TempDir store, and cleanup registered on t.
package bustest

import (
	"testing"

	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Harness is a running embedded server with one client connection.
type Harness struct {
	Server *server.Server
	Conn   *nats.Conn
	JS     jetstream.JetStream
	// StoreDir is the server's JetStream directory, for restart tests.
	StoreDir string
}

// URL is the client URL of the server.
func (h *Harness) URL() string { return h.Server.ClientURL() }

// Start runs an embedded JetStream server for the duration of the test.
// cfg may be the zero value; StoreDir defaults to a fresh t.TempDir().
func Start(t testing.TB, cfg bus.EmbeddedConfig) *Harness {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	ns, err := bus.StartEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	nc := Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &Harness{Server: ns, Conn: nc, JS: js, StoreDir: cfg.StoreDir}
}

// Connect opens a client connection that is closed when the test ends.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
