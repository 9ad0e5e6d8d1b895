package antientropy_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/factsync/factsync/shared/runner"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// meshPeer is one site of a test mesh: its own embedded server (own
// JetStream domain, leafnode-linked to the hub), a guard and the
// anti-entropy service.
type meshPeer struct {
	name string
	id   events.PeerID
	nc   *nats.Conn
	js   jetstream.JetStream
	svc  *antientropy.Service
}

// startMeshServer starts peer i's embedded server, linked to hub, for
// the test's lifetime, and connects to it with the peer's private inbox:
// replies from other peers cross the hub only to that inbox.
func startMeshServer(t *testing.T, hub *mesh.Hub, i int) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	ns, err := hub.StartPeer(i, bus.EmbeddedConfig{StoreDir: t.TempDir(), LazySync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc := bustest.Connect(t, ns.ClientURL(), nats.CustomInboxPrefix(hub.InboxPrefix(i)))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// startMesh starts a hub and one peer per rights entry. Each peer holds
// a credential for d's authority with those rights, minted for its own
// key, and syncs on a short interval.
func startMesh(t *testing.T, d *device, rights ...[]capability.Right) (*mesh.Hub, []*meshPeer) {
	t.Helper()
	keys, ids := mesh.NewPeers(len(rights))
	hub, err := mesh.StartHub(mesh.HubConfig{Peers: ids})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	peers := make([]*meshPeer, len(rights))
	for i, r := range rights {
		nc, js := startMeshServer(t, hub, i)
		pub, key := keys[i].Public().(ed25519.PublicKey), keys[i]
		token, err := capability.Mint(d.authKey, pub, r, time.Now().Add(time.Hour))
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
			RequestTimeout:   2 * time.Second,
			PeerRate:         1000, PeerBurst: 1000,
		})
		bustest.RunServices(t, runner.Config{
			Conn: nc, DataRoot: t.TempDir(), Peer: events.PeerIDOf(pub), PeerKey: key,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}, guard.New(guard.Config{}), svc)
		peers[i] = &meshPeer{name: string(rune('A' + i)), id: events.PeerIDOf(pub), nc: nc, js: js, svc: svc}
	}
	return hub, peers
}

// write publishes facts into the peer's own INGRESS, as its clients do.
func (p *meshPeer) write(t *testing.T, d *device, facts ...*events.Fact) {
	t.Helper()
	batch := &eventsv1.FactBatch{Tokens: [][]byte{d.token}}
	for _, f := range facts {
		batch.Facts = append(batch.Facts, f.Proto())
	}
	b, _ := proto.Marshal(batch)
	if _, err := p.js.Publish(context.Background(), events.IngressFactSubject(d.auth()), b); err != nil {
		t.Fatal(err)
	}
}

// journal returns the facts in the peer's JOURNAL.
func (p *meshPeer) journal(t *testing.T) map[events.FactID]*events.Fact {
	t.Helper()
	ctx := context.Background()
	st, err := p.js.Stream(ctx, events.StreamJournal)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[events.FactID]*events.Fact{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if f, err := events.DecodeFact(m.Data); err == nil {
			out[f.ID] = f
		}
	}
	return out
}

// digest folds the peer's JOURNAL into documents and returns the fold's
// digest.
func (p *meshPeer) digest(t *testing.T) [32]byte {
	t.Helper()
	st := fold.New()
	for _, f := range p.journal(t) {
		st.Apply(f)
	}
	return st.Digest()
}

// root is the peer's negentropy root fingerprint of the authority.
func (p *meshPeer) root(auth events.AuthorityID) string {
	sum, n := p.svc.Root(auth)
	fp := sum.Fingerprint(uint64(n))
	return fmt.Sprintf("%x/%d", fp, n)
}

// syncNow asks the peer's service to sync with other now, as the CLI does
// through the guard.
func (p *meshPeer) syncNow(t *testing.T, auth events.AuthorityID, other events.PeerID) antientropy.SyncReport {
	t.Helper()
	body, _ := json.Marshal(antientropy.SyncRequest{Peer: other})
	m, err := p.nc.Request(events.ServiceSubject(antientropy.Name, antientropy.OpSync, auth), body, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply antientropy.SyncReply
	if err := json.Unmarshal(m.Data, &reply); err != nil || len(reply.Sessions) != 1 {
		t.Fatalf("sync reply %s: %v", m.Data, err)
	}
	return reply.Sessions[0]
}

func syncRights() []capability.Right {
	return []capability.Right{{Collection: capability.AnyCollection, Op: capability.OpSync}}
}

// Three peers; C is partitioned while all three write, including
// concurrent edits of one document; after the partition heals every peer
// holds the same facts (same negentropy root) and the same documents
// (same fold digest), reached by the service's own triggers.
func TestPartitionHealsToIdenticalState(t *testing.T) {
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	hub, peers := startMesh(t, d, syncRights(), syncRights(), syncRights())
	a, b, c := peers[0], peers[1], peers[2]
	auth := d.auth()
	converged := func(want int, ps ...*meshPeer) func() bool {
		return func() bool {
			r := ps[0].root(auth)
			for _, p := range ps {
				if _, n := p.svc.Root(auth); n != want || p.root(auth) != r {
					return false
				}
			}
			return true
		}
	}

	// Before the partition: A's facts reach everyone.
	var before []*events.Fact
	for i := range 20 {
		before = append(before, d.fact(t, fmt.Sprintf("a%d", i%5), i))
	}
	a.write(t, d, before...)
	bustest.Eventually(t, 90*time.Second, converged(20, a, b, c), "A's 20 facts to reach B and C")

	hub.Cut(2)
	n := 20
	for i, p := range peers {
		var facts []*events.Fact
		for j := range 15 {
			facts = append(facts, d.fact(t, fmt.Sprintf("%s%d", p.name, j%4), 100*i+j))
		}
		// Concurrent edits of one document on every side.
		facts = append(facts, d.fact(t, "shared", 1000+i))
		p.write(t, d, facts...)
		n += len(facts)
	}
	bustest.Eventually(t, 90*time.Second, converged(n-16, a, b), "A and B to converge without C")
	if _, got := c.svc.Root(auth); got != 20+16 {
		t.Fatalf("partitioned C holds %d facts, want its own 36: the partition leaked", got)
	}

	hub.Heal(2)
	bustest.Eventually(t, 45*time.Second, converged(n, a, b, c), "all three peers to hold the same %d facts after the heal", n)
	da := a.digest(t)
	for _, p := range peers[1:] {
		if got := p.digest(t); got != da {
			t.Fatalf("peer %s folds to %x, peer A to %x: same facts, different documents", p.name, got, da)
		}
	}
}

// A peer whose token lacks `sync` is refused with a reason by the other
// peer's guard, before a session opens: it learns nothing, not even a
// fingerprint.
func TestPeerWithoutSyncRightLearnsNothing(t *testing.T) {
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	readOnly := []capability.Right{{Collection: capability.AnyCollection, Op: capability.OpRead}}
	_, peers := startMesh(t, d, syncRights(), readOnly)
	a, n := peers[0], peers[1]
	a.write(t, d, d.fact(t, "secret", 1))
	bustest.Eventually(t, 90*time.Second, func() bool { _, c := a.svc.Root(d.auth()); return c == 1 }, "A to index its fact")

	var rep antientropy.SyncReport
	bustest.Eventually(t, 90*time.Second, func() bool {
		rep = n.syncNow(t, d.auth(), a.id)
		// The mesh link may still be coming up, and the peer's own
		// triggered session with A may hold the one slot per peer.
		return rep.Reason != string(events.ReasonUnavailable) && rep.Reason != string(events.ReasonRateLimited)
	}, "the peer without sync to reach A")
	if rep.State != antientropy.StateFailed || rep.Reason != string(events.ReasonNoRight) {
		t.Fatalf("sync without the sync right: state %s reason %q (%s), want failed no_right", rep.State, rep.Reason, rep.Error)
	}
	if rep.Mode != "" || rep.Rounds != 0 || rep.Pulled != 0 {
		t.Fatalf("the refused peer got a session: %+v", rep)
	}
	if _, c := n.svc.Root(d.auth()); c != 0 {
		t.Fatalf("the refused peer holds %d facts", c)
	}
	m, err := a.nc.Request(events.ServiceSubject(antientropy.Name, antientropy.OpStatus, d.auth()), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st antientropy.Status
	if err := json.Unmarshal(m.Data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Open != 0 {
		t.Fatalf("A opened %d sessions for a peer without sync", st.Open)
	}
}

// A malicious peer serves a forged fact from its responder. Every honest
// peer that pulls it hands it to its own guard, which denies it
// (bad_signature, in its DENIED); it reaches no honest JOURNAL, so it
// cannot spread from one honest peer to another.
func TestForgedFactIsDeniedAndNeverSpreads(t *testing.T) {
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	_, peers := startMesh(t, d, syncRights(), syncRights(), syncRights())
	evil, r, v := peers[0], peers[1], peers[2]
	ctx := context.Background()

	// The malicious peer controls its own server: it writes a fact
	// signed by a key that is not the device's straight into its JOURNAL,
	// with the device's token beside it.
	good := d.fact(t, "doc", 1)
	_, wrongKey, _ := ed25519.GenerateKey(rand.Reader)
	body := proto.CloneOf(good.Decoded)
	body.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`{"owner":"mallory"}`)}}
	raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(body)
	forged, err := events.FactFromProto(&eventsv1.SignedFact{Body: raw, Signature: ed25519.Sign(wrongKey, raw)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := evil.js.Publish(ctx, events.TokenSubject(d.auth(), events.TokenHash(d.token)), d.token); err != nil {
		t.Fatal(err)
	}
	if _, err := evil.js.Publish(ctx, events.JournalSubject(d.auth(), "notes"), forged.Marshal(), jetstream.WithMsgID(forged.ID.String())); err != nil {
		t.Fatal(err)
	}
	r.write(t, d, good)

	rep := antientropy.SyncReport{}
	bustest.Eventually(t, 90*time.Second, func() bool {
		rep = r.syncNow(t, d.auth(), evil.id)
		return rep.State == antientropy.StateCompleted || rep.Reason == string(events.ReasonRateLimited)
	}, "R to sync with the malicious peer")
	bustest.Eventually(t, 90*time.Second, func() bool { return denied(t, r, forged.ID) }, "R's guard to deny the forged fact")
	// Let V sync with R, and everyone settle on the honest set.
	bustest.Eventually(t, 90*time.Second, func() bool {
		_, cr := r.svc.Root(d.auth())
		_, cv := v.svc.Root(d.auth())
		return cr == 1 && cv == 1 && r.root(d.auth()) == v.root(d.auth())
	}, "R and V to hold the one good fact")
	for _, p := range []*meshPeer{r, v} {
		if _, ok := p.journal(t)[forged.ID]; ok {
			t.Fatalf("the forged fact reached peer %s's JOURNAL", p.name)
		}
	}
}

// denied reports whether the peer's DENIED holds a bad_signature denial of
// id.
func denied(t *testing.T, p *meshPeer, id events.FactID) bool {
	t.Helper()
	ctx := context.Background()
	st, err := p.js.Stream(ctx, events.StreamDenied)
	if err != nil {
		return false
	}
	m, err := st.GetLastMsgForSubject(ctx, events.DeniedSubject(events.ReasonBadSignature))
	if err != nil {
		return false
	}
	var den eventsv1.Denial
	return proto.Unmarshal(m.Data, &den) == nil && den.GetFactId() == hex.EncodeToString(id[:])
}

// Every anti-entropy request a peer sends names the sync protocol version
// of its build, so that after a hard fork the upgraded peers' guards let
// each other through (a request without it counts as version 1).
func TestPeerRequestsCarryTheProtocolVersion(t *testing.T) {
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	_, peers := startMesh(t, d, syncRights(), syncRights())
	a, b := peers[0], peers[1]
	seen := make(chan nats.Header, 64)
	sub, err := b.nc.Subscribe(events.PeerPrefix+"."+string(b.id)+"."+antientropy.Name+".>", func(m *nats.Msg) {
		select {
		case seen <- m.Header:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	a.write(t, d, d.fact(t, "doc", 1))
	a.syncNow(t, d.auth(), b.id)
	want := fmt.Sprint(events.ProtocolVersion)
	select {
	case h := <-seen:
		if got := h.Get(events.HeaderProtocolVersion); got != want {
			t.Fatalf("a peer request carries %s %q, want %q", events.HeaderProtocolVersion, got, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no anti-entropy request reached the other peer")
	}
}

// Facts near the 64 KiB limit, 40 on each side, are 2.5 MB each way: more
// than one INGRESS message or NATS payload may hold. Fetch replies and
// pushes are cut to what fits (MaxBatchBytes), so the peers still
// converge, pulling and pushing.
func TestLargeFactsSyncInBatchesThatFitIngress(t *testing.T) {
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	_, peers := startMesh(t, d, syncRights(), syncRights())
	a, b := peers[0], peers[1]
	filler := strings.Repeat("x", 60<<10)
	large := func(doc string, n int) *events.Fact {
		th, _ := hex.DecodeString(events.TokenHash(d.token))
		f, err := events.SignFact(d.key, &eventsv1.FactBody{
			AuthorityKey: d.authPub, TokenHash: th, Collection: "notes", Document: doc,
			Hlc: &eventsv1.HLC{WallMillis: uint64(time.Now().UnixMilli()), Logical: uint32(n)},
			Op:  &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: fmt.Appendf(nil, `{"n":%d,"pad":%q}`, n, filler)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	for i := range 8 {
		var onA, onB []*events.Fact
		for j := range 5 {
			onA = append(onA, large(fmt.Sprintf("a%d", i*5+j), i*5+j))
			onB = append(onB, large(fmt.Sprintf("b%d", i*5+j), i*5+j))
		}
		a.write(t, d, onA...)
		b.write(t, d, onB...)
	}
	bustest.Eventually(t, 90*time.Second, func() bool {
		_, na := a.svc.Root(d.auth())
		_, nb := b.svc.Root(d.auth())
		return na == 80 && nb == 80 && a.root(d.auth()) == b.root(d.auth())
	}, "A and B to hold all 80 large facts")
	// The sessions ran riblt: they fetched and pushed by id prefix, each
	// difference confirmed against the peer's fingerprint (no fallback),
	// and no fact moved for sharing a prefix.
	moved := 0
	for _, p := range []*meshPeer{a, b} {
		for _, rep := range p.status(t, d.auth()).Sessions {
			if rep.Mode == "" {
				continue // failed before a mode was chosen
			}
			if rep.Mode != antientropy.ModeRIBLT || rep.Fallback || rep.Extra != 0 {
				t.Errorf("peer %s: session %+v; want %s without fallback or extra facts", p.name, rep, antientropy.ModeRIBLT)
			}
			moved += rep.Pulled + rep.Pushed
		}
	}
	if moved == 0 {
		t.Error("no session pulled or pushed a fact")
	}
}

// status asks the peer's service for its status of auth, as `factsync
// sync status` does.
func (p *meshPeer) status(t *testing.T, auth events.AuthorityID) antientropy.Status {
	t.Helper()
	m, err := p.nc.Request(events.ServiceSubject(antientropy.Name, antientropy.OpStatus, auth), []byte("{}"), 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st antientropy.Status
	if err := json.Unmarshal(m.Data, &st); err != nil {
		t.Fatalf("status reply %s: %v", m.Data, err)
	}
	return st
}
