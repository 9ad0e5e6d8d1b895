package ota

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// releaseKey is the release authority's key; releaseAuthority is its id.
var releaseKey = keyFrom("release-authority")

// meshSite is one peer of a test mesh: its own embedded server (own
// JetStream domain, leafnode-linked to the hub), a guard and the ota
// service.
type meshSite struct {
	id      events.PeerID
	key     ed25519.PrivateKey
	nc      *nats.Conn
	js      jetstream.JetStream
	svc     *Service
	dataDir string
	cred    Credential // the peer's sync token
	gate    *events.ProtocolGate
}

// mint is a token of the release authority for key, valid for the test's
// fake year.
func mint(t *testing.T, key ed25519.PublicKey, ops ...capability.Op) []byte {
	t.Helper()
	rights := make([]capability.Right, len(ops))
	for i, op := range ops {
		rights[i] = capability.Right{Collection: capability.AnyCollection, Op: op}
	}
	token, err := capability.Mint(releaseKey, key, rights, t0.Add(testLifetime))
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// startOTAMesh starts a hub and one peer per fleet peer key, each running
// the guard and a staging ota service under clk; peer 0 coordinates.
func startOTAMesh(t *testing.T, f fleet, clk clock.Clock) (*mesh.Hub, []*meshSite) {
	t.Helper()
	ids := make([]events.PeerID, len(f.peers))
	for i, key := range f.peers {
		ids[i] = events.PeerIDOf(key.Public().(ed25519.PublicKey))
	}
	hub, err := mesh.StartHub(mesh.HubConfig{Peers: ids})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	root := mustSign(t, f.rootPolicy(1), f.root[0], f.root[1])
	coordinator := events.PeerIDOf(f.peers[0].Public().(ed25519.PublicKey))
	sites := make([]*meshSite, len(f.peers))
	for i, key := range f.peers {
		ns, err := hub.StartPeer(i, bus.EmbeddedConfig{StoreDir: t.TempDir(), LazySync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		pub := key.Public().(ed25519.PublicKey)
		site := &meshSite{
			// Replies from other peers cross the hub only to this
			// peer's private inbox.
			id: events.PeerIDOf(pub), key: key, nc: bustest.Connect(t, ns.ClientURL(), nats.CustomInboxPrefix(hub.InboxPrefix(i))),
			dataDir: t.TempDir(),
			cred:    Credential{AuthorityKey: releaseKey.Public().(ed25519.PublicKey), Token: mint(t, pub, capability.OpSync)},
		}
		if site.js, err = jetstream.New(site.nc); err != nil {
			t.Fatal(err)
		}
		site.svc = New(Config{
			Authority: releaseAuthority, Root: root, Stage: true, Tick: time.Minute,
			Coordinator: coordinator, Credential: site.cred, RequestTimeout: 5 * time.Second,
		})
		bustest.RunServices(t, runner.Config{
			Conn: site.nc, DataRoot: site.dataDir, Peer: site.id, PeerKey: key, Clock: clk,
			Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError})),
		}, guard.New(guard.Config{RequestTimeout: 10 * time.Second}), site.svc)
		if site.gate, err = events.WatchProtocol(t.Context(), site.js); err != nil {
			t.Fatal(err)
		}
		sites[i] = site
	}
	meshUp(t, sites)
	return hub, sites
}

// operator is a client of site's own guard with a device token that may
// propose, approve, report and read.
func (s *meshSite) operator(t *testing.T) *Client {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	return &Client{
		Conn: s.nc, Authority: releaseAuthority, AuthorityKey: releaseKey.Public().(ed25519.PublicKey),
		Token: mint(t, pub, capability.OpOTAPropose, capability.OpOTAApprove, capability.OpSync, capability.OpRead),
	}
}

// meshUp waits until every peer's guard answers every other peer. A round
// trip proves the interest in both directions has crossed the hub: until
// then a request can reach a peer whose reply cannot find its way back.
func meshUp(t *testing.T, sites []*meshSite) {
	t.Helper()
	body, _ := json.Marshal(events.OTALogRequest{Collection: "*"})
	for _, from := range sites {
		for _, to := range sites {
			if from == to {
				continue
			}
			eventually(t, "peer "+string(from.id)+" to reach peer "+string(to.id), func() (bool, string) {
				reason, err := tryPeerRequest(from, to, events.OTAProto, events.OTAOpLog, events.ProtocolVersion, body, time.Second)
				return err == nil && reason == "", string(reason) + errString(err)
			})
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// ceremonyOn reports whether every site's ledger holds ceremony id in
// state.
func ceremonyOn(id string, state events.OTAState, sites ...*meshSite) func() (bool, string) {
	return func() (bool, string) {
		seen := ""
		for _, s := range sites {
			c := s.svc.Ledger().Ceremonies[id]
			seen += string(s.id[:6]) + ":" + string(c.State) + " "
			if c.State != state {
				return false, seen
			}
		}
		return true, seen
	}
}

// peerRequest asks to's guard, across the mesh from another site, for
// proto's op as a peer speaking protocol, and returns the refusal reason
// ("" when the guard forwarded it).
func peerRequest(t *testing.T, from, to *meshSite, proto, op string, protocol uint32, body []byte) events.Reason {
	t.Helper()
	reason, err := tryPeerRequest(from, to, proto, op, protocol, body, patience)
	if err != nil {
		t.Fatalf("peer request to %s: %v", to.id, err)
	}
	return reason
}

func tryPeerRequest(from, to *meshSite, proto, op string, protocol uint32, body []byte, timeout time.Duration) (events.Reason, error) {
	m := nats.NewMsg(events.PeerSubject(to.id, proto, op))
	m.Data = body
	m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(from.cred.Token))
	m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(from.cred.AuthorityKey))
	m.Header.Set(events.HeaderAuthority, string(releaseAuthority))
	m.Header.Set(events.HeaderProtocolVersion, strconv.FormatUint(uint64(protocol), 10))
	reply, err := from.nc.RequestMsg(m, timeout)
	if err != nil {
		return "", err
	}
	return events.Reason(reply.Header.Get(events.HeaderReason)), nil
}

// TestMeshHardFork runs the whole ceremony across a real mesh: three
// peers, each with its own server and JetStream domain, leafnode-linked
// to a hub; peer 0 coordinates. A hard fork proposed through a follower
// gets 2 of 3 approvals through the followers' guards, every peer stages
// it and its readiness reaches the coordinator through the mesh, and at
// the agreed activation time every peer's protocol gate moves to protocol
// 2 with the same ActiveVersion. A peer still on protocol 1 is then
// refused for sync with protocol_version by every peer, and every peer's
// OTA stream replays to the same ledger.
func TestMeshHardFork(t *testing.T) {
	f := newFleet()
	clk := clock.NewFake(t0)
	_, sites := startOTAMesh(t, f, clk)
	coord, follower1, follower2 := sites[0], sites[1], sites[2]
	ctx := context.Background()
	activateAt, deadline := t0.Add(2*time.Hour), t0.Add(4*time.Hour)

	// Proposed on a follower, recorded by the coordinator, copied by all.
	prop := NewProposal("factsync", "v2.0.0", events.OTAHardFork, 2, artifact, activateAt, deadline)
	cer, err := follower1.operator(t).Propose(ctx, prop, artifact)
	if err != nil || cer.State != events.OTAStateProposed {
		t.Fatalf("propose through a follower: %v, %+v", err, cer)
	}
	eventually(t, "every peer to copy the proposal", ceremonyOn(cer.ID, events.OTAStateProposed, sites...))

	// Approvals from distinct approvers, each through a different
	// follower's guard.
	if _, err := follower1.operator(t).Approve(ctx, cer.ID, f.approvers[0]); err != nil {
		t.Fatalf("approval through follower 1: %v", err)
	}
	if _, err := follower2.operator(t).Approve(ctx, cer.ID, keyFrom("not-an-approver")); !events.IsReason(err, events.ReasonBadSignature) {
		t.Fatalf("approval by a stranger through follower 2: %v; want bad_signature", err)
	}
	eventually(t, "follower 2 to copy the first approval", func() (bool, string) {
		n := len(follower2.svc.Ledger().Ceremonies[cer.ID].Approvals)
		return n == 1, jsonString(n)
	})
	if _, err := follower2.operator(t).Approve(ctx, cer.ID, f.approvers[0]); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("the same approver again through follower 2: %v; want conflict", err)
	}
	if _, err := follower2.operator(t).Approve(ctx, cer.ID, f.approvers[2]); err != nil {
		t.Fatalf("approval through follower 2: %v", err)
	}

	// Every peer stages the release; the followers fetch it from the
	// coordinator, and their signed readiness reaches it across the mesh.
	eventually(t, "readiness of all three peers to commit the ceremony everywhere", ceremonyOn(cer.ID, events.OTAStateCommitted, sites...))
	for _, s := range sites {
		c := s.svc.Ledger().Ceremonies[cer.ID]
		if len(c.Approvals) != 2 || len(c.Readiness) != 3 {
			t.Fatalf("peer %s holds %d approvals and %d readiness reports, want 2 and 3", s.id, len(c.Approvals), len(c.Readiness))
		}
		staged, err := os.ReadFile(filepath.Join(s.dataDir, Name, "staged", "factsync", "v2.0.0", prop.Artifact.SHA256))
		if err != nil || string(staged) != string(artifact) {
			t.Fatalf("peer %s staged %q (%v)", s.id, staged, err)
		}
	}

	// A relaying peer cannot speak for another: follower 1 sends, with
	// its own credential, a withdrawal in follower 2's name that it signed
	// itself. The coordinator checks the signature on arrival.
	forged := SignReadiness(follower1.key, cer.ProposalBytes, events.OTANotReady, "")
	forged.Signature.KeyID = string(follower2.id)
	body, _ := json.Marshal(events.OTAReadyRequest{Collection: "*", Readiness: forged})
	if reason := peerRequest(t, follower1, coord, events.OTAProto, events.OTAOpReady, events.ProtocolVersion, body); reason != events.ReasonBadSignature {
		t.Fatalf("forged readiness across the mesh: reason %q, want bad_signature", reason)
	}

	// Committed is not active: nothing changes before the agreed time.
	for _, s := range sites {
		if err := s.gate.Admit(1); err != nil {
			t.Fatalf("peer %s refuses protocol 1 before activation: %v", s.id, err)
		}
	}
	clk.Advance(2 * time.Hour)
	eventually(t, "activation on every peer", ceremonyOn(cer.ID, events.OTAStateActivated, sites...))
	want := events.ActiveVersion{Protocol: 2, Proposal: cer.ID, Package: "factsync", Version: "v2.0.0", ActivatedAt: activateAt}
	for _, s := range sites {
		eventually(t, "the protocol gate of peer "+string(s.id)+" to move to protocol 2", func() (bool, string) {
			got := s.gate.Active()
			return got.Protocol == 2, jsonString(got)
		})
		if got := s.gate.Active(); got != want {
			t.Fatalf("peer %s: active %s, want %s: every peer moves at the agreed point", s.id, jsonString(got), jsonString(want))
		}
	}

	// A peer left on protocol 1 is refused for sync by every peer's
	// guard; one on protocol 2 gets past the gate (to find no
	// anti-entropy service running in this test); OTA stays open to both.
	for i, to := range sites {
		from := sites[(i+1)%len(sites)]
		eventually(t, "the guard of peer "+string(to.id)+" to refuse protocol 1", func() (bool, string) {
			r := peerRequest(t, from, to, "antientropy", "open", 1, []byte(`{}`))
			return r == events.ReasonProtocolVersion, string(r)
		})
		if r := peerRequest(t, from, to, "antientropy", "open", 2, []byte(`{}`)); r != events.ReasonUnavailable {
			t.Fatalf("peer %s at protocol 2: reason %q, want it past the gate (unavailable: no anti-entropy here)", to.id, r)
		}
		log, _ := json.Marshal(events.OTALogRequest{Collection: "*"})
		if r := peerRequest(t, from, to, events.OTAProto, events.OTAOpLog, 1, log); r != "" {
			t.Fatalf("peer %s refuses the OTA log to a peer on protocol 1: %s", to.id, r)
		}
	}

	// Every peer's stream is the same log: each replays to the same
	// ledger as the running services.
	anchor := f.trusted(t)
	want0 := ledgerJSON(t, coord.svc.Ledger())
	for _, s := range sites {
		eventually(t, "peer "+string(s.id)+" to hold the coordinator's whole log", func() (bool, string) {
			got := ledgerJSON(t, s.svc.Ledger())
			return got == want0, got
		})
		replayed, _, err := Replay(ctx, s.js, anchor)
		if err != nil {
			t.Fatal(err)
		}
		if got := ledgerJSON(t, replayed); got != want0 {
			t.Fatalf("peer %s replays to\n%s\nwant\n%s", s.id, got, want0)
		}
	}
}

// TestMeshPartitionedPeerBlocksActivation: a peer cut off from the mesh
// before the release is approved never stages it, so readiness stays
// short of the quorum of 3: the agreed time passes without activation,
// the ceremony aborts timed_out at its deadline on the peers that can
// hear the coordinator, and no peer's protocol moves. Once healed, the
// cut-off peer copies the same outcome.
func TestMeshPartitionedPeerBlocksActivation(t *testing.T) {
	f := newFleet()
	clk := clock.NewFake(t0)
	hub, sites := startOTAMesh(t, f, clk)
	coord, follower1, cutOff := sites[0], sites[1], sites[2]
	ctx := context.Background()

	prop := NewProposal("factsync", "v2.0.0", events.OTAHardFork, 2, artifact, t0.Add(2*time.Hour), t0.Add(4*time.Hour))
	cer, err := follower1.operator(t).Propose(ctx, prop, artifact)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "every peer to copy the proposal", ceremonyOn(cer.ID, events.OTAStateProposed, sites...))

	hub.Cut(2)
	// The cut-off peer's own writes cannot reach the coordinator.
	if _, err := cutOff.operator(t).Approve(ctx, cer.ID, f.approvers[1]); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("approval through a partitioned follower: %v; want unavailable", err)
	}
	for _, k := range f.approvers[:2] {
		if _, err := coord.operator(t).Approve(ctx, cer.ID, k); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the two connected peers to report ready", func() (bool, string) {
		c := follower1.svc.Ledger().Ceremonies[cer.ID]
		return c.State == events.OTAStateCollecting && readyCount(c) == 2, jsonString(c.Readiness)
	})

	clk.Advance(2 * time.Hour) // the agreed time: 2 of 3 ready is not the quorum
	clk.Advance(2 * time.Hour) // the deadline
	eventually(t, "the ceremony to abort on the connected peers", ceremonyOn(cer.ID, events.OTAStateAborted, coord, follower1))
	if c := coord.svc.Ledger().Ceremonies[cer.ID]; c.AbortReason != events.OTAAbortTimedOut {
		t.Fatalf("aborted for %s (%s), want timed_out", c.AbortReason, c.Detail)
	}
	if c := cutOff.svc.Ledger().Ceremonies[cer.ID]; c.State != events.OTAStateProposed {
		t.Fatalf("the partitioned peer moved to %s without the coordinator", c.State)
	}

	hub.Heal(2)
	// The healed peer copies on its next tick; the link may take a few
	// ticks to come back.
	eventually(t, "the healed peer to copy the abort", func() (bool, string) {
		ok, seen := ceremonyOn(cer.ID, events.OTAStateAborted, cutOff)()
		if !ok {
			clk.Advance(time.Minute)
		}
		return ok, seen
	})
	want := ledgerJSON(t, coord.svc.Ledger())
	for _, s := range sites {
		if got := s.gate.Active(); got.Protocol != 1 {
			t.Fatalf("peer %s moved to protocol %d after an aborted ceremony", s.id, got.Protocol)
		}
		eventually(t, "peer "+string(s.id)+" to hold the coordinator's log", func() (bool, string) {
			got := ledgerJSON(t, s.svc.Ledger())
			return got == want, got
		})
	}
}

// A follower trusts the coordinator for the order of events, not their
// validity: a forged approval in the coordinator's log is stored, so the
// logs stay aligned, but changes nothing in the follower's ledger or its
// replay. Entries out of order or outside the OTA subjects stop the copy.
func TestFollowerJudgesCopiedEventsItself(t *testing.T) {
	f := newFleet()
	h := bustest.Start(t, bus.EmbeddedConfig{LazySync: true})
	ctx := context.Background()
	if err := bus.Provision(ctx, h.JS, events.OTAStream()); err != nil {
		t.Fatal(err)
	}
	stream, err := h.JS.Stream(ctx, events.StreamOTA)
	if err != nil {
		t.Fatal(err)
	}
	anchor := f.trusted(t)
	s := New(Config{Authority: releaseAuthority, Coordinator: events.PeerIDOf(f.peers[0].Public().(ed25519.PublicKey))})
	if s.metrics, err = newMetrics(nil); err != nil {
		t.Fatal(err)
	}
	s.env = &service.Env{Conn: h.Conn, JS: h.JS, Clock: clock.NewFake(t0), Peer: events.PeerIDOf(f.peers[1].Public().(ed25519.PublicKey)),
		Log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))}
	s.stream, s.ledger = stream, NewLedger(anchor)

	entry := func(seq uint64, ev events.OTAEvent) events.OTALogEntry {
		b, err := events.EncodeOTAEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		return events.OTALogEntry{Seq: seq, Subject: eventSubject(ev), Data: b}
	}
	prop := proposedEvent(proposal(anchor, "v2.0.0"), t0)
	forged := approvedEvent(keyFrom("not-an-approver"), prop.ProposalBytes, t0)
	forged.Approval.Signature.KeyID = events.KeyID(f.approvers[0].Public().(ed25519.PublicKey))
	if err := s.store(ctx, []events.OTALogEntry{entry(1, prop), entry(2, forged)}); err != nil {
		t.Fatal(err)
	}
	l := s.Ledger()
	if c := l.Ceremonies[prop.Proposal]; c.State != events.OTAStateProposed || len(c.Approvals) != 0 {
		t.Fatalf("after a forged approval the follower holds %s with %d approvals", c.State, len(c.Approvals))
	}
	if s.applied != 2 {
		t.Fatalf("the follower's log ends at %d, want 2: the refused event keeps its place", s.applied)
	}
	replayed, last, err := Replay(ctx, h.JS, anchor)
	if err != nil || last != 2 || ledgerJSON(t, replayed) != ledgerJSON(t, l) {
		t.Fatalf("replay to %d (%v):\n%s\nwant\n%s", last, err, ledgerJSON(t, replayed), ledgerJSON(t, l))
	}

	good := approvedEvent(f.approvers[0], prop.ProposalBytes, t0)
	if err := s.store(ctx, []events.OTALogEntry{entry(4, good)}); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("an entry after a gap: %v; want malformed", err)
	}
	outside := entry(3, good)
	outside.Subject = events.JournalSubject(releaseAuthority, "notes")
	if err := s.store(ctx, []events.OTALogEntry{outside}); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("an entry outside fs.ota.>: %v; want malformed", err)
	}
	if err := s.store(ctx, []events.OTALogEntry{entry(2, forged), entry(3, good)}); err != nil {
		t.Fatalf("copying on, with an entry already held: %v", err)
	}
	if n := len(s.Ledger().Ceremonies[prop.Proposal].Approvals); n != 1 {
		t.Fatalf("the genuine approval: %d approvals, want 1", n)
	}

	// Serving the log: a peer whose log forked from this one learns so.
	first := entry(1, prop)
	reply, err := s.readLog(ctx, events.OTALogRequest{After: 1, AfterDigest: events.OTALogDigest(first.Subject, first.Data)})
	if err != nil || len(reply.Entries) != 2 || reply.Entries[0].Seq != 2 || reply.Last != 3 {
		t.Fatalf("log after 1: %v, %+v", err, reply)
	}
	if _, err := s.readLog(ctx, events.OTALogRequest{After: 1, AfterDigest: events.OTALogDigest(first.Subject, append([]byte(" "), first.Data...))}); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("log after a different event 1: %v; want conflict", err)
	}
	if _, err := s.readLog(ctx, events.OTALogRequest{After: 9}); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("log after an event this log never had: %v; want conflict", err)
	}
}
