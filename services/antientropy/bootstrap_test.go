package antientropy_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/snapshot"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/factsync/factsync/shared/runner"
)

// snapshotPeer is a mesh peer that also runs the snapshot service.
type snapshotPeer struct {
	*meshPeer
	snap *snapshot.Service
}

// startSnapshotPeer starts peer i of hub with a guard, the snapshot
// service (commits with one signature of a peer in approvers) and the
// anti-entropy service, holding a sync credential of d's authority minted
// for key.
func startSnapshotPeer(t *testing.T, hub *mesh.Hub, i int, d *device, key ed25519.PrivateKey, approvers []events.PeerID) *snapshotPeer {
	t.Helper()
	nc, js := startMeshServer(t, hub, i)
	pub := key.Public().(ed25519.PublicKey)
	token, err := capability.Mint(d.authKey, pub, syncRights(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	svc := antientropy.New(antientropy.Config{
		SketchSize:       4096,
		Credentials:      map[events.AuthorityID]antientropy.Credential{d.auth(): {AuthorityKey: d.authPub, Token: token}},
		SyncInterval:     200 * time.Millisecond,
		PresenceInterval: 100 * time.Millisecond,
		BaseBackoff:      50 * time.Millisecond,
		MaxBackoff:       400 * time.Millisecond,
		RequestTimeout:   5 * time.Second,
		PeerRate:         1000, PeerBurst: 1000,
	})
	snap := snapshot.New(snapshot.Config{EveryFacts: -1, EveryTime: -1, Default: snapshot.Policy{Threshold: 1, Peers: approvers}})
	bustest.RunServices(t, runner.Config{
		Conn: nc, DataRoot: t.TempDir(), Peer: events.PeerIDOf(pub), PeerKey: key,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, guard.New(guard.Config{}), snap, svc)
	return &snapshotPeer{meshPeer: &meshPeer{name: string(rune('A' + i)), id: events.PeerIDOf(pub), nc: nc, js: js, svc: svc}, snap: snap}
}

// factAt signs a put of doc at wall-clock time at.
func (d *device) factAt(t *testing.T, doc string, at time.Time, n int) *events.Fact {
	t.Helper()
	th, _ := hex.DecodeString(events.TokenHash(d.token))
	f, err := events.SignFact(d.key, &eventsv1.FactBody{
		AuthorityKey: d.authPub, TokenHash: th, Collection: "notes", Document: doc,
		Hlc: &eventsv1.HLC{WallMillis: uint64(at.UnixMilli())},
		Op:  &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: fmt.Appendf(nil, `{"n":%d}`, n)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestNewPeerBootstrapsFromAPrunedPeer: peer A snapshots its history and
// prunes what the snapshot covers. New peer B, each on its own embedded
// server linked through the mesh, syncs with A by its own triggers: A
// offers the snapshot instead of the facts it no longer holds, B restores
// it through A's guard with its sync token, then reconciles only the range
// after the cut. B ends with A's documents, A's facts after the cut, and
// before the cut exactly the snapshot's facts; nothing before the cut is
// pushed back into A.
func TestNewPeerBootstrapsFromAPrunedPeer(t *testing.T) {
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite},
		capability.Right{Collection: capability.AnyCollection, Op: capability.OpSnapshot})
	_, keyA, _ := ed25519.GenerateKey(rand.Reader)
	_, keyB, _ := ed25519.GenerateKey(rand.Reader)
	idA := events.PeerIDOf(keyA.Public().(ed25519.PublicKey))
	hub, err := mesh.StartHub(mesh.HubConfig{Peers: []events.PeerID{idA, events.PeerIDOf(keyB.Public().(ed25519.PublicKey))}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	a := startSnapshotPeer(t, hub, 0, d, keyA, []events.PeerID{idA})
	auth := d.auth()

	// 300 facts over 30 documents in the last 10 minutes; the cut leaves
	// the last 60 after it, which write only 10 of the documents, so the
	// others' state is the snapshot's alone.
	start := time.Now().Add(-10 * time.Minute)
	var history []*events.Fact
	for i := range 300 {
		doc := i % 30
		if i >= 240 {
			doc = i % 10
		}
		history = append(history, d.factAt(t, fmt.Sprintf("d%d", doc), start.Add(time.Duration(i)*2*time.Second), i))
	}
	for i := 0; i < len(history); i += 100 {
		a.write(t, d, history[i:i+100]...)
	}
	bustest.Eventually(t, 30*time.Second, func() bool { return len(a.journal(t)) == len(history) }, "A's JOURNAL holds the history")
	cut := history[240].HLC.Seconds()
	ctx := context.Background()
	creds := snapshot.Credentials{Token: d.token, AuthorityKey: d.authPub}
	info, err := a.snap.Create(ctx, auth, cut, creds)
	if err != nil || !info.Committed {
		t.Fatalf("A's snapshot: committed=%v err=%v", info.Committed, err)
	}
	pruned, err := a.snap.Prune(ctx, auth, creds)
	if err != nil || pruned.Facts == 0 {
		t.Fatalf("A's prune: %+v, %v", pruned, err)
	}
	heldByA := len(a.journal(t))

	want := fold.New()
	after := map[events.FactID]bool{}
	for _, f := range history {
		want.Apply(f)
		if f.HLC.Seconds() >= cut {
			after[f.ID] = true
		}
	}
	b := startSnapshotPeer(t, hub, 1, d, keyB, []events.PeerID{idA})
	bustest.Eventually(t, 60*time.Second, func() bool { return b.digest(t) == want.Digest() }, "B folds A's documents")

	got := b.journal(t)
	for id := range after {
		if got[id] == nil {
			t.Fatalf("B lacks fact %s after the cut", id)
		}
	}
	before := 0
	for id := range got {
		if !after[id] {
			before++
		}
	}
	if uint64(before) != info.Facts {
		t.Fatalf("B holds %d facts before the cut; the snapshot holds %d", before, info.Facts)
	}
	if len(got) != heldByA {
		t.Fatalf("B holds %d facts, A %d", len(got), heldByA)
	}
	// B's fact set after the cut is A's: the same negentropy summary of
	// the range after the cut, on both indexes.
	bustest.Eventually(t, 30*time.Second, func() bool { return b.root(auth) == a.root(auth) }, "A and B index the same facts")
	if n := len(a.journal(t)); n != heldByA {
		t.Fatalf("A's JOURNAL went from %d to %d facts: pruned history came back", heldByA, n)
	}

	// Both keep syncing after the cut: a fact written on B reaches A.
	late := d.factAt(t, "late", time.Now(), 1)
	b.write(t, d, late)
	bustest.Eventually(t, 30*time.Second, func() bool { return a.journal(t)[late.ID] != nil }, "a new fact on B reaches A")
}
