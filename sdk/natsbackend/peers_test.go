package natsbackend_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/natsbackend"
	"github.com/factsync/factsync/sdk/sdktest"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/factsync/factsync/shared/runner"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// meshPresenceInterval is how often the test peers announce themselves.
// Long enough that a busy machine does not make a peer miss three
// heartbeats, which would count as a reconnect and start a session of
// its own in the middle of a test that counts what ForceSync moves.
const meshPresenceInterval = time.Second

// startPeerClients runs n peers as `factsync dev --peers n` does (a mesh
// hub; per peer an embedded server with factsync's role users, linked to
// the hub, running the guard, the journal and anti-entropy with a sync
// token for one fresh authority; the services on the hub's private inbox)
// and returns one client on each, of a device with read, write and sync.
// The peers sync only when asked: no interval, and the sessions they
// start when they first hear each other are over before this returns.
func startPeerClients(t *testing.T, n int) sdktest.Peers {
	t.Helper()
	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	auth := events.AuthorityIDOf(authPub)
	peerKeys, ids := mesh.NewPeers(n)
	hub, err := mesh.StartHub(mesh.HubConfig{Peers: ids})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)

	users := map[natsauth.Role]natsauth.User{}
	for _, r := range []natsauth.Role{natsauth.RoleGuard, natsauth.RoleServices, natsauth.RoleClient} {
		users[r] = natsauth.User{Name: string(r), Password: string(r) + "-secret", Role: r}
	}
	client := users[natsauth.RoleClient]
	client.Authorities, client.PrivateInbox = []events.AuthorityID{auth}, true
	users[natsauth.RoleClient] = client
	configure, err := natsauth.Apply(slices.Collect(maps.Values(users))...)
	if err != nil {
		t.Fatal(err)
	}
	p := sdktest.Peers{Cut: hub.Cut, Heal: hub.Heal}
	var statusConns []*nats.Conn
	for i := range n {
		ns, err := hub.StartPeer(i, bus.EmbeddedConfig{StoreDir: t.TempDir(), LazySync: true, Configure: configure})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		as := func(u natsauth.User, inbox string) *nats.Conn {
			return bustest.Connect(t, ns.ClientURL(), nats.UserInfo(u.Name, u.Password), nats.CustomInboxPrefix(inbox))
		}
		guardConn := as(users[natsauth.RoleGuard], "_INBOX")
		servicesConn := as(users[natsauth.RoleServices], hub.InboxPrefix(i))
		syncToken, err := capability.Mint(authKey, peerKeys[i].Public().(ed25519.PublicKey),
			[]capability.Right{{Collection: capability.AnyCollection, Op: capability.OpSync}}, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		bustest.RunServices(t, runner.Config{
			Conn: servicesConn, ServiceConns: map[string]*nats.Conn{guard.Name: guardConn},
			DataRoot: t.TempDir(), Peer: ids[i], PeerKey: peerKeys[i],
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}, guard.New(guard.Config{}), journal.New(journal.Config{}), antientropy.New(antientropy.Config{
			SketchSize:       4096,
			Credentials:      map[events.AuthorityID]antientropy.Credential{auth: {AuthorityKey: authPub, Token: syncToken}},
			SyncInterval:     -1,
			PresenceInterval: meshPresenceInterval,
			RequestTimeout:   5 * time.Second,
		}))
		statusConns = append(statusConns, servicesConn)

		devicePub, deviceKey, _ := ed25519.GenerateKey(rand.Reader)
		token, err := capability.Mint(authKey, devicePub, []capability.Right{
			{Collection: capability.AnyCollection, Op: capability.OpRead},
			{Collection: capability.AnyCollection, Op: capability.OpWrite},
			{Collection: capability.AnyCollection, Op: capability.OpSync},
		}, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		b := natsbackend.New(natsbackend.Options{
			Conn:            as(client, natsauth.InboxPrefix(client.Name)),
			PresenceTimeout: 3 * meshPresenceInterval,
		})
		if err := b.Initialize(t.Context(), sdk.Config{AuthorityKey: authPub, DeviceKey: deviceKey, Token: token, StateDir: t.TempDir()}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
		p.Clients = append(p.Clients, b)
	}
	// Each peer starts a session with every other when it first hears
	// it; wait until each has recorded one, so none runs behind the
	// test's back.
	for i, nc := range statusConns {
		bustest.Eventually(t, 60*time.Second, func() bool {
			m, err := nc.Request(events.ServiceSubject(events.AntiEntropyProto, events.AntiEntropyOpStatus, auth), nil, 5*time.Second)
			var st events.SyncStatus
			if err != nil || json.Unmarshal(m.Data, &st) != nil {
				return false
			}
			heard := map[events.PeerID]bool{}
			for _, rep := range st.Sessions {
				heard[rep.Peer] = true
			}
			return len(heard) == n-1
		}, "peer %d's first sessions with the others", i)
	}
	return p
}

// Discovery follows the server's presence bucket: a peer is discovered
// and connected when the anti-entropy service records its first
// heartbeat, disconnected after two of its announced intervals of
// silence on the client's clock (not the shorter PresenceTimeout), and
// lost when its key expires from the bucket, on the server's own clock:
// the client's fake clock stays far from its own fallback. A malformed
// or misaddressed heartbeat is never recorded.
func TestDiscoveryFollowsThePresenceBucket(t *testing.T) {
	h := startStack(t, antientropy.New(antientropy.Config{SyncInterval: -1}))
	fake := clock.NewFake(time.Unix(1_700_000_000, 0))
	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	devicePub, deviceKey, _ := ed25519.GenerateKey(rand.Reader)
	token, err := capability.Mint(authKey, devicePub, []capability.Right{{Collection: capability.AnyCollection, Op: capability.OpRead}}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	b := natsbackend.New(natsbackend.Options{Conn: bustest.Connect(t, h.URL()), PresenceTimeout: 300 * time.Millisecond, RequestTimeout: time.Second})
	if err := b.Initialize(t.Context(), sdk.Config{AuthorityKey: authPub, DeviceKey: deviceKey, Token: token, Clock: fake}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	d := b.PeerDiscovery()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	peerEvents := d.Events(ctx)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, 10*time.Second, func() bool { return fake.Waiters() > 0 }, "discovery's ticker")

	peer := events.PeerID(strings.Repeat("p", events.IDLen))
	other := events.PeerID(strings.Repeat("q", events.IDLen))
	// A 2 s interval: the key lives 6 s on the server's clock.
	const every = 2 * time.Second
	body, err := events.EncodePresence(events.Presence{Peer: peer, IntervalMillis: every.Milliseconds()})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		subject string
		body    []byte
	}{
		{events.PresenceSubject(other), body}, // misaddressed
		{events.PresenceSubject(other), []byte("not a heartbeat")},
		{events.PresenceSubject(peer), body},
	} {
		if err := h.Conn.Publish(m.subject, m.body); err != nil {
			t.Fatal(err)
		}
	}

	// next returns the next event, which must be want about peer, last
	// seen at seen.
	next := func(want sdk.PeerEventKind, seen time.Time) {
		t.Helper()
		select {
		case ev := <-peerEvents:
			if ev.Kind != want || ev.Peer.ID != peer || !ev.Peer.LastSeen.Equal(seen) {
				t.Fatalf("peer event %s of %s last seen %s, want %s of %s last seen %s", ev.Kind, ev.Peer.ID, ev.Peer.LastSeen, want, peer, seen)
			}
		case <-ctx.Done():
			t.Fatalf("no %s event", want)
		}
	}
	seen := fake.Now()
	next(sdk.PeerDiscovered, seen)
	next(sdk.PeerConnected, seen)
	kv, err := h.JS.KeyValue(ctx, events.PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := kv.Keys(ctx); err != nil || len(keys) != 1 || keys[0] != string(peer) {
		t.Fatalf("presence bucket keys %v, %v; want only %s", keys, err, peer)
	}

	// Silence on the client's clock: disconnected after two intervals,
	// though PresenceTimeout (0.3 s) passes long before. The fake ticker
	// drops the ticks a busy reader misses, so the clock moves a tick at
	// a time.
	for {
		fake.Advance(100 * time.Millisecond)
		select {
		case ev := <-peerEvents:
			if ev.Kind != sdk.PeerDisconnected || ev.Peer.ID != peer || fake.Now().Sub(seen) < 2*every {
				t.Fatalf("peer event %s of %s, %s after its heartbeat; want disconnected after at least %s", ev.Kind, ev.Peer.ID, fake.Now().Sub(seen), 2*every)
			}
		case <-time.After(20 * time.Millisecond):
			if fake.Now().Sub(seen) > 10*every {
				t.Fatal("no disconnected event")
			}
			continue
		}
		break
	}
	// Lost when the server expires the key; the client's clock stands
	// still, so its own fallback (twice the key's TTL) cannot fire.
	next(sdk.PeerLost, seen)
	if _, err := kv.Get(ctx, string(peer)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the peer is lost while its key is still in the bucket: %v", err)
	}
	if ps := d.DiscoveredPeers(); len(ps) != 0 {
		t.Fatalf("discovered peers after the loss: %v", ps)
	}
}

// A sync the server refuses or fails keeps its reason code: a device
// without the `sync` right is refused no_right; a peer holding no sync
// token for the authority does not start (not_configured) and its
// sessions fail bad_token.
func TestSyncRefusalsKeepTheirReasons(t *testing.T) {
	h := startStack(t, antientropy.New(antientropy.Config{SyncInterval: -1}))
	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	client := func(rights ...capability.Right) *natsbackend.Backend {
		devicePub, deviceKey, _ := ed25519.GenerateKey(rand.Reader)
		token, err := capability.Mint(authKey, devicePub, rights, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		b := natsbackend.New(natsbackend.Options{Conn: bustest.Connect(t, h.URL())})
		if err := b.Initialize(t.Context(), sdk.Config{AuthorityKey: authPub, DeviceKey: deviceKey, Token: token}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
		return b
	}
	ctx := t.Context()
	other := events.PeerID(strings.Repeat("b", events.IDLen))

	reader := client(capability.Right{Collection: capability.AnyCollection, Op: capability.OpRead})
	if reader.Info().Peer != "" {
		t.Fatalf("a device without sync learned the peer id %s", reader.Info().Peer)
	}
	if _, err := reader.SyncEngine().ForceSync(ctx, other); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("force sync without the sync right: %v, want no_right", err)
	}
	if err := reader.SyncEngine().Start(ctx); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("start sync without the sync right: %v, want no_right", err)
	}

	syncer := client(capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	if err := syncer.Info().Peer.Validate(); err != nil {
		t.Fatalf("a device with sync did not learn its peer: %v", err)
	}
	if err := syncer.SyncEngine().Start(ctx); !events.IsReason(err, events.ReasonNotConfigured) {
		t.Fatalf("start sync on a peer without a sync token for the authority: %v, want not_configured", err)
	}
	if syncer.SyncEngine().IsSyncing() {
		t.Fatal("an engine that failed to start reports syncing")
	}
	if _, err := syncer.SyncEngine().ForceSync(ctx, other); !events.IsReason(err, events.ReasonBadToken) {
		t.Fatalf("force sync on a peer without a sync token for the authority: %v, want bad_token", err)
	}
	if _, err := syncer.SyncEngine().ForceSync(ctx, syncer.Info().Peer); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("force sync with the backend's own peer: %v, want malformed", err)
	}
	if err := syncer.SyncEngine().SubscribeCollections(ctx, "notes"); !events.IsReason(err, events.ReasonUnsupported) {
		t.Fatalf("subscribe to collections: %v, want unsupported", err)
	}
}
