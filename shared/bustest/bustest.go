// Package bustest starts real embedded JetStream servers for tests, in the
// manner of nats-server's RunBasicJetStreamServer: loopback, a random port,
// a t.TempDir store, and cleanup registered on t.
package bustest

import (
	"net"
	"testing"
	"time"

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

	cfg bus.EmbeddedConfig
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
	return &Harness{Server: ns, Conn: nc, JS: js, StoreDir: cfg.StoreDir, cfg: cfg}
}

// Restart shuts the server down, as a crash-free restart would, and starts
// a new one on the same store directory and config (a new port when the
// port was random). Use the returned harness; h's connection is closed.
func (h *Harness) Restart(t testing.TB) *Harness {
	t.Helper()
	h.Conn.Close()
	h.Server.Shutdown()
	h.Server.WaitForShutdown()
	return Start(t, h.cfg)
}

// Eventually polls cond every few milliseconds until it holds, failing the
// test with msg if it does not within d. Tests use it instead of sleeping.
func Eventually(t testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: "+msg, append([]any{d}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// FreePort returns a loopback TCP port that was free a moment ago, for
// what must know its port before it starts: a cluster node whose route
// the other nodes name, or a process restarted on the same port.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
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
