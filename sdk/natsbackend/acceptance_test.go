package natsbackend_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/natsbackend"
	"github.com/factsync/factsync/sdk/sdktest"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/service"
)

// startStack runs an embedded server with the guard, the journal and
// extra services, as `factsync dev` does, for the duration of the test.
func startStack(t *testing.T, extra ...service.Service) *bustest.Harness {
	t.Helper()
	h := bustest.Start(t, bus.EmbeddedConfig{LazySync: true})
	peerPub, peerKey, _ := ed25519.GenerateKey(rand.Reader)
	bustest.RunServices(t, runner.Config{
		Conn:     h.Conn,
		DataRoot: t.TempDir(),
		Peer:     events.PeerIDOf(peerPub),
		PeerKey:  peerKey,
	}, append([]service.Service{guard.New(guard.Config{}), journal.New(journal.Config{})}, extra...)...)
	return h
}

func TestAcceptance(t *testing.T) {
	sdktest.TestBackend(t, sdktest.Setup{
		NewPeerClients: startPeerClients,
		Timeout:        30 * time.Second,
		NewClients: func(t *testing.T, n int, tweak func(*sdk.Config)) []sdk.DataSyncBackend {
			h := startStack(t)
			authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
			var out []sdk.DataSyncBackend
			for range n {
				devicePub, deviceKey, _ := ed25519.GenerateKey(rand.Reader)
				token, err := capability.Mint(authKey, devicePub, []capability.Right{
					{Collection: capability.AnyCollection, Op: capability.OpRead},
					{Collection: capability.AnyCollection, Op: capability.OpWrite},
				}, time.Now().Add(time.Hour))
				if err != nil {
					t.Fatal(err)
				}
				cfg := sdk.Config{AuthorityKey: authPub, DeviceKey: deviceKey, Token: token, StateDir: t.TempDir()}
				if tweak != nil {
					tweak(&cfg)
				}
				b := natsbackend.New(natsbackend.Options{Conn: bustest.Connect(t, h.URL())})
				if err := b.Initialize(t.Context(), cfg); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
				out = append(out, b)
			}
			return out
		},
	})
}

// A read-only device: the guard refuses its reads of other rights with the
// guard's reason, and its write fails with the guard's reason too, from
// the denial notice on the change feed, long before the visibility
// timeout.
func TestGuardRefusalsReachTheCaller(t *testing.T) {
	h := startStack(t)
	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	devicePub, deviceKey, _ := ed25519.GenerateKey(rand.Reader)
	token, err := capability.Mint(authKey, devicePub, []capability.Right{{Collection: "public", Op: capability.OpRead}}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	b := natsbackend.New(natsbackend.Options{Conn: bustest.Connect(t, h.URL()), VisibleTimeout: 10 * time.Minute})
	ctx := t.Context()
	if err := b.Initialize(ctx, sdk.Config{AuthorityKey: authPub, DeviceKey: deviceKey, Token: token}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })

	if _, err := b.DocumentStore().Get(ctx, "private", "x"); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("read without the right: %v, want no_right", err)
	}
	if _, err := b.DocumentStore().Get(ctx, "public", "x"); !events.IsReason(err, events.ReasonNotFound) {
		t.Fatalf("read with the right: %v, want not_found", err)
	}
	// Without the notice the write would wait for this deadline and say
	// unavailable.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := b.DocumentStore().Upsert(wctx, "public", "x", map[string]any{"a": 1}); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("write without the right: %v, want the guard's no_right", err)
	}
}
