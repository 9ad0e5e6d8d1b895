package antientropy_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/factsync/factsync/shared/runner"
	"github.com/nats-io/nats.go/jetstream"
)

// peerStatus returns what p's status says of other.
func (p *meshPeer) peerStatus(t *testing.T, auth events.AuthorityID, other events.PeerID) (antientropy.PeerStatus, bool) {
	t.Helper()
	for _, ps := range p.status(t, auth).Peers {
		if ps.Peer == other {
			return ps, true
		}
	}
	return antientropy.PeerStatus{}, false
}

// bucket opens one of the peer's own key-value buckets.
func (p *meshPeer) bucket(t *testing.T, name string) jetstream.KeyValue {
	t.Helper()
	kv, err := p.js.KeyValue(context.Background(), name)
	if err != nil {
		t.Fatalf("bucket %s: %v", name, err)
	}
	return kv
}

// Each peer records the heartbeats it hears in its own presence bucket,
// a key per peer with a TTL of three of the peer's intervals; a peer cut
// off stops heartbeating, its key expires, and the service counts it
// lost; after the heal it is back.
func TestPresenceKeyExpiresWhenHeartbeatsStop(t *testing.T) {
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	hub, peers := startMesh(t, d, syncRights(), syncRights())
	a, b := peers[0], peers[1]
	ctx := t.Context()
	presence := a.bucket(t, events.PresenceBucket)
	var rec events.PresenceRecord
	bustest.Eventually(t, 30*time.Second, func() bool {
		e, err := presence.Get(ctx, string(b.id))
		return err == nil && json.Unmarshal(e.Value(), &rec) == nil
	}, "B's key in A's presence bucket")
	if rec.Peer != b.id || rec.IntervalMillis != 100 || rec.HeardAt.IsZero() {
		t.Fatalf("A's record of B: %+v, want peer %s, interval 100 ms, the time heard", rec, b.id)
	}
	if _, err := presence.Get(ctx, string(a.id)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("A's bucket holds A itself: %v", err)
	}
	bustest.Eventually(t, 30*time.Second, func() bool { ps, ok := a.peerStatus(t, d.auth(), b.id); return ok && ps.Present }, "A to count B present")

	hub.Cut(1)
	bustest.Eventually(t, 30*time.Second, func() bool {
		_, err := presence.Get(ctx, string(b.id))
		return errors.Is(err, jetstream.ErrKeyNotFound)
	}, "B's key to expire from A's bucket once B is cut off")
	bustest.Eventually(t, 30*time.Second, func() bool { ps, ok := a.peerStatus(t, d.auth(), b.id); return ok && !ps.Present }, "A to count B lost")

	hub.Heal(1)
	bustest.Eventually(t, 30*time.Second, func() bool { ps, ok := a.peerStatus(t, d.auth(), b.id); return ok && ps.Present }, "A to count B present after the heal")
}

// A peer added with add_peer is kept in the static-peer bucket and
// synced at once, though it was in no configuration and never heard: B
// announced itself only before A existed. A malformed id, this peer's
// own and an id no peer answers for are refused with reasons.
func TestAddPeerSyncsWithAPeerNotConfigured(t *testing.T) {
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	keys, ids := mesh.NewPeers(2)
	hub, err := mesh.StartHub(mesh.HubConfig{Peers: ids})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	// start runs peer i with a heartbeat an hour apart, so it announces
	// itself once, at start, and no interval: it syncs only when told.
	start := func(i int, creds map[events.AuthorityID]antientropy.Credential) *meshPeer {
		nc, js := startMeshServer(t, hub, i)
		svc := antientropy.New(antientropy.Config{
			SketchSize: 4096, Credentials: creds,
			SyncInterval: -1, PresenceInterval: time.Hour, RequestTimeout: 2 * time.Second,
		})
		bustest.RunServices(t, runner.Config{
			Conn: nc, DataRoot: t.TempDir(), Peer: ids[i], PeerKey: keys[i],
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}, guard.New(guard.Config{}), svc)
		return &meshPeer{name: string(rune('A' + i)), id: ids[i], nc: nc, js: js, svc: svc}
	}
	// B holds a fact and no credential: it answers sessions, starts none.
	b := start(1, nil)
	b.write(t, d, d.fact(t, "on-b", 1))
	bustest.Eventually(t, 30*time.Second, func() bool { _, n := b.svc.Root(d.auth()); return n == 1 }, "B to index its fact")
	token, err := capability.Mint(d.authKey, keys[0].Public().(ed25519.PublicKey), syncRights(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	a := start(0, map[events.AuthorityID]antientropy.Credential{d.auth(): {AuthorityKey: d.authPub, Token: token}})

	addPeer := func(peer string) (antientropy.PeerStatus, error) {
		body, _ := json.Marshal(map[string]string{"peer": peer})
		m, err := a.nc.Request(events.ServiceSubject(antientropy.Name, events.AntiEntropyOpAddPeer, d.auth()), body, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(events.HeaderReason) != "" {
			return antientropy.PeerStatus{}, events.DecodeError(m.Data)
		}
		var ps antientropy.PeerStatus
		if err := json.Unmarshal(m.Data, &ps); err != nil {
			t.Fatalf("add_peer reply %s: %v", m.Data, err)
		}
		return ps, nil
	}
	for _, c := range []struct {
		peer string
		want events.Reason
	}{
		{"not-a-peer", events.ReasonMalformed},
		{string(a.id), events.ReasonMalformed},
		{strings.Repeat("a", events.IDLen), events.ReasonNotFound},
	} {
		if _, err := addPeer(c.peer); !events.IsReason(err, c.want) {
			t.Fatalf("add peer %q: %v, want %s", c.peer, err, c.want)
		}
	}
	if st := a.status(t, d.auth()); len(st.Peers) != 0 || len(st.Sessions) != 0 {
		t.Fatalf("before add_peer A knows %+v and ran %+v; want no peer, no session", st.Peers, st.Sessions)
	}

	var ps antientropy.PeerStatus
	bustest.Eventually(t, 60*time.Second, func() bool {
		// The leafnode link may still be coming up (nothing answers
		// yet), or the probe may time out on a busy machine.
		ps, err = addPeer(string(b.id))
		return !events.IsReason(err, events.ReasonNotFound) && !events.IsReason(err, events.ReasonUnavailable)
	}, "B to answer on the mesh")
	if err != nil || ps.Peer != b.id || !ps.Static || !ps.Added || ps.Present {
		t.Fatalf("add B: %+v, %v; want B static, added, not present (never heard)", ps, err)
	}
	bustest.Eventually(t, 30*time.Second, func() bool { _, n := a.svc.Root(d.auth()); return n == 1 }, "A to pull B's fact after adding B")
	if _, err := a.bucket(t, events.StaticPeerBucket).Get(t.Context(), string(b.id)); err != nil {
		t.Fatalf("B is not in A's static-peer bucket: %v", err)
	}
	if _, err := addPeer(string(b.id)); err != nil {
		t.Fatalf("adding B again: %v, want it accepted", err)
	}
}
