package guard

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// testNow is the guard's (fake) time in tests.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// device is a device key with a token from its authority.
type device struct {
	authPub  ed25519.PublicKey
	authPriv ed25519.PrivateKey
	pub      ed25519.PublicKey
	priv     ed25519.PrivateKey
	token    []byte
	hlc      uint64
}

func genKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// newDevice makes an authority and a device holding rights until expiry.
func newDevice(t testing.TB, expiry time.Time, rights ...string) *device {
	t.Helper()
	d := &device{hlc: uint64(testNow.UnixMilli())}
	d.authPub, d.authPriv = genKey(t)
	d.pub, d.priv = genKey(t)
	d.token = mintToken(t, d.authPriv, d.pub, expiry, rights...)
	return d
}

func mintToken(t testing.TB, auth ed25519.PrivateKey, dev ed25519.PublicKey, expiry time.Time, rights ...string) []byte {
	t.Helper()
	r, err := capability.ParseRights(rights)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := capability.Mint(auth, dev, r, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (d *device) auth() events.AuthorityID { return events.AuthorityIDOf(d.authPub) }

// fact signs a put of doc in collection, citing token.
func (d *device) fact(t testing.TB, collection, doc string, token []byte) *events.Fact {
	t.Helper()
	d.hlc++
	return d.factAt(t, collection, doc, token, d.hlc)
}

func (d *device) factAt(t testing.TB, collection, doc string, token []byte, hlcMillis uint64) *events.Fact {
	t.Helper()
	hash, _ := hex.DecodeString(events.TokenHash(token))
	fields, _ := json.Marshal(map[string]any{"title": doc, "n": hlcMillis})
	f, err := events.SignFact(d.priv, &eventsv1.FactBody{
		AuthorityKey: d.authPub,
		Hlc:          &eventsv1.HLC{WallMillis: hlcMillis},
		Collection:   collection,
		Document:     doc,
		Op:           &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: fields}},
		TokenHash:    hash,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// batch encodes facts with the tokens they cite.
func batch(tokens [][]byte, facts ...*events.Fact) []byte {
	fb := &eventsv1.FactBatch{Tokens: tokens}
	for _, f := range facts {
		fb.Facts = append(fb.Facts, f.Proto())
	}
	b, _ := proto.Marshal(fb)
	return b
}

// guardEnv is a running guard on its own embedded server.
type guardEnv struct {
	h     *bustest.Harness
	svc   *Service
	clock *clock.Fake
	peer  events.PeerID
	stop  func()
}

func startServer(t testing.TB) *bustest.Harness {
	t.Helper()
	h := bustest.Start(t, bus.EmbeddedConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Provision(ctx, h.JS, New(Config{}).Streams()...); err != nil {
		t.Fatal(err)
	}
	return h
}

// runGuard starts a guard on h and returns once it is ready; stop cancels
// it and waits for Run to return.
func runGuard(t testing.TB, h *bustest.Harness, clk *clock.Fake, svc *Service) (peer events.PeerID, stop func()) {
	t.Helper()
	peerPub, peerPriv := genKey(t)
	peer = events.PeerIDOf(peerPub)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	env := &service.Env{
		Conn: h.Conn, JS: h.JS, Clock: clk,
		Log:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Peer: peer, PeerKey: peerPriv,
		Ready: func() { close(ready) },
	}
	go func() { done <- svc.Run(ctx, env) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("guard stopped before ready: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("guard not ready within 20s")
	}
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("guard Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return peer, stop
}

func startGuard(t testing.TB, cfg Config) *guardEnv {
	t.Helper()
	h := startServer(t)
	clk := clock.NewFake(testNow)
	svc := New(cfg)
	peer, stop := runGuard(t, h, clk, svc)
	return &guardEnv{h: h, svc: svc, clock: clk, peer: peer, stop: stop}
}

func (g *guardEnv) currentPolicy() *Policy { return g.svc.policy.current.Load() }

func (g *guardEnv) publish(t testing.TB, auth events.AuthorityID, data []byte) {
	t.Helper()
	publishIngress(t, g.h.JS, auth, data)
}

func publishIngress(t testing.TB, js jetstream.JetStream, auth events.AuthorityID, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, events.IngressFactSubject(auth), data); err != nil {
		t.Fatal(err)
	}
}

// streamMsgs returns how many messages stream holds on subject filter.
func streamMsgs(t testing.TB, js jetstream.JetStream, stream, filter string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// waitRedelivered waits until the guard's INGRESS consumer has delivered a
// message again.
func waitRedelivered(ctx context.Context, t testing.TB, js jetstream.JetStream) {
	t.Helper()
	eventually(t, 20*time.Second, "the message redelivered", func() bool {
		c, err := js.Consumer(ctx, events.StreamIngress, Name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumRedelivered > 0
	})
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readStream returns every message of stream on filter.
func readStream(t testing.TB, js jetstream.JetStream, stream, filter string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := streamMsgs(t, js, stream, filter)
	if n == 0 {
		return nil
	}
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for uint64(len(out)) < n {
		b, err := c.Fetch(int(min(n-uint64(len(out)), 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			out = append(out, m)
		}
		if err := b.Error(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// policyDir writes the shipped policy with data changed by edit.
func policyDir(t testing.TB, edit func(cfg map[string]any)) string {
	t.Helper()
	dir := t.TempDir()
	writePolicy(t, dir, edit)
	return dir
}

func writePolicy(t testing.TB, dir string, edit func(cfg map[string]any)) {
	t.Helper()
	src := DefaultPolicy()
	rego, err := fs.ReadFile(src, "guard.rego")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := fs.ReadFile(src, "data.json")
	var data map[string]any
	if err := json.Unmarshal(raw, &data); err != nil {
		t.Fatal(err)
	}
	edit(data["factsync"].(map[string]any)["config"].(map[string]any))
	raw, _ = json.Marshal(data)
	if err := os.WriteFile(filepath.Join(dir, "guard.rego"), rego, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
}
