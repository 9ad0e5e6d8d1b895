package ota

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
)

// releaseAuthority is the test deployment's release authority.
var releaseAuthority = events.AuthorityIDOf(keyFrom("release-authority").Public().(ed25519.PublicKey))

// peerSite is one running ota service with its peer identity.
type peerSite struct {
	svc     *Service
	dataDir string
	key     ed25519.PrivateKey
}

// startPeers runs one ota service per peer key against the server of h,
// each on its own connection, sharing the fake clock. They stop, and are
// waited for, before the server shuts down.
func startPeers(t *testing.T, h *bustest.Harness, clk clock.Clock, root events.OTASignedRoot, stage bool, peerKeys ...ed25519.PrivateKey) []peerSite {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var sites []peerSite
	done := make(chan error, len(peerKeys))
	for _, key := range peerKeys {
		nc := bustest.Connect(t, h.URL())
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ready := make(chan struct{})
		site := peerSite{svc: New(Config{Authority: releaseAuthority, Root: root, Stage: stage, Tick: time.Minute}), dataDir: t.TempDir(), key: key}
		env := &service.Env{
			Conn: nc, JS: js, Clock: clk,
			Log:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
			Peer:    events.PeerIDOf(key.Public().(ed25519.PublicKey)),
			PeerKey: key, DataDir: site.dataDir,
			Ready: func() { close(ready) },
		}
		go func() { done <- site.svc.Run(ctx, env) }()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("ota service stopped before it was ready: %v", err)
		case <-time.After(patience):
			t.Fatal("ota service not ready in time")
		}
		sites = append(sites, site)
	}
	t.Cleanup(func() {
		cancel()
		for range peerKeys {
			if err := <-done; err != nil {
				t.Errorf("ota service: %v", err)
			}
		}
	})
	return sites
}

// patience bounds every wait for the services: generous, because CI runs
// packages side by side with -race on 2 cores.
const patience = 30 * time.Second

// eventually polls cond until it holds or patience runs out.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s; last seen: %s", what, patience, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ceremonyIs(t *testing.T, c *Client, id string, state events.OTAState) func() (bool, string) {
	return func() (bool, string) {
		cer, err := c.Ceremony(context.Background(), id)
		if err != nil {
			return false, err.Error()
		}
		return cer.State == state, string(cer.State) + " " + string(cer.AbortReason) + " " + cer.Detail
	}
}

// ledgerJSON renders what replay must rebuild identically.
func ledgerJSON(t *testing.T, l Ledger) string {
	t.Helper()
	b, err := json.Marshal(struct {
		Policy     uint64
		Ceremonies map[string]events.OTACeremony
		Latest     map[string]string
		Active     events.ActiveVersion
		Announced  uint32
	}{l.Policy.Version, l.Ceremonies, l.Latest, l.Active, l.Announced})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestThreePeerHardFork runs three ota services, one per peer, on one
// embedded server (the mesh is not there yet, so the three peers share
// one OTA stream). A hard fork gets 2 of 3 approvals, every peer stages
// it and reports ready, it activates at its time, and a peer still on
// protocol 1 is then refused with protocol_version.
func TestThreePeerHardFork(t *testing.T) {
	f := newFleet()
	h := bustest.Start(t, bus.EmbeddedConfig{LazySync: true})
	clk := clock.NewFake(t0)
	root := mustSign(t, f.rootPolicy(1), f.root[0], f.root[1])
	sites := startPeers(t, h, clk, root, true, f.peers...)
	ctx := context.Background()

	gate, err := events.WatchProtocol(t.Context(), h.JS)
	if err != nil {
		t.Fatal(err)
	}
	if err := gate.Admit(1); err != nil {
		t.Fatalf("protocol 1 refused before any fork: %v", err)
	}

	client := &Client{Conn: h.Conn, Authority: releaseAuthority, Direct: true}
	prop := NewProposal("factsync", "v2.0.0", events.OTAHardFork, 2, artifact, t0.Add(2*time.Hour), t0.Add(4*time.Hour))
	cer, err := client.Propose(ctx, prop, artifact)
	if err != nil {
		t.Fatal(err)
	}
	if cer.State != events.OTAStateProposed || cer.Threshold != 2 || cer.Quorum != 3 {
		t.Fatalf("proposed: %+v", cer)
	}

	tampered := append([]byte("x"), artifact[1:]...)
	if _, err := client.Propose(ctx, NewProposal("factsync", "v2.0.1", events.OTAHardFork, 2, artifact, t0.Add(2*time.Hour), t0.Add(4*time.Hour)), tampered); !events.IsReason(err, events.ReasonBadProof) {
		t.Fatalf("proposal with a tampered artifact: %v; want bad_proof", err)
	}
	if _, err := client.Approve(ctx, cer.ID, keyFrom("not-an-approver")); !events.IsReason(err, events.ReasonBadSignature) {
		t.Fatalf("approval by a stranger: %v; want bad_signature", err)
	}
	if cer, err = client.Approve(ctx, cer.ID, f.approvers[0]); err != nil || cer.State != events.OTAStateProposed {
		t.Fatalf("first approval: %v, state %s", err, cer.State)
	}
	if _, err := client.Approve(ctx, cer.ID, f.approvers[0]); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("second approval by the same approver: %v; want conflict", err)
	}
	if _, err = client.Approve(ctx, cer.ID, f.approvers[2]); err != nil {
		t.Fatal(err)
	}

	// Every peer stages the approved release and reports ready.
	eventually(t, "all peers ready", ceremonyIs(t, client, cer.ID, events.OTAStateCommitted))
	for _, s := range sites {
		staged, err := os.ReadFile(filepath.Join(s.dataDir, "staged", "factsync", "v2.0.0", prop.Artifact.SHA256))
		if err != nil || string(staged) != string(artifact) {
			t.Fatalf("peer %s staged %q (%v)", events.KeyID(s.key.Public().(ed25519.PublicKey)), staged, err)
		}
	}
	if err := gate.Admit(1); err != nil {
		t.Fatalf("protocol 1 refused before activation: %v", err)
	}

	clk.Advance(2 * time.Hour)
	eventually(t, "activation", ceremonyIs(t, client, cer.ID, events.OTAStateActivated))
	eventually(t, "protocol 2 in force", func() (bool, string) {
		return gate.Active().Protocol == 2, "active " + jsonString(gate.Active())
	})
	err = gate.Admit(1)
	if !events.IsReason(err, events.ReasonProtocolVersion) {
		t.Fatalf("old peer after the hard fork: %v; want protocol_version", err)
	}
	if err := gate.Admit(2); err != nil {
		t.Fatalf("new peer refused: %v", err)
	}
	active, err := events.LoadActiveVersion(ctx, h.JS)
	if err != nil || active.Protocol != 2 || active.Proposal != cer.ID {
		t.Fatalf("LoadActiveVersion = %+v, %v", active, err)
	}

	// A fresh replica replaying the stream rebuilds the same state.
	anchor, err := TrustRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	replayed, _, err := Replay(ctx, h.JS, anchor)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		eventually(t, "replicas agree", func() (bool, string) {
			got := ledgerJSON(t, s.svc.Ledger())
			return got == ledgerJSON(t, replayed), got
		})
	}
	if replayed.Ceremonies[cer.ID].State != events.OTAStateActivated || replayed.Announced != 2 {
		t.Fatalf("replayed: state %s, announced %d", replayed.Ceremonies[cer.ID].State, replayed.Announced)
	}
}

// TestMissedDeadline: a release approved but never ready aborts with
// timed_out at its deadline; one never approved aborts with
// insufficient_approvals. Peers here stage out of band, through the client.
func TestMissedDeadline(t *testing.T) {
	f := newFleet()
	h := bustest.Start(t, bus.EmbeddedConfig{LazySync: true})
	clk := clock.NewFake(t0)
	root := mustSign(t, f.rootPolicy(1), f.root[0], f.root[1])
	startPeers(t, h, clk, root, false, f.peers[0])
	ctx := context.Background()
	client := &Client{Conn: h.Conn, Authority: releaseAuthority, Direct: true}

	approved, err := client.Propose(ctx, NewProposal("factsync", "v2.0.0", events.OTAHardFork, 2, artifact, t0.Add(2*time.Hour), t0.Add(3*time.Hour)), artifact)
	if err != nil {
		t.Fatal(err)
	}
	unapproved, err := client.Propose(ctx, NewProposal("agent", "v0.2.0", events.OTASoftFork, 0, artifact, t0.Add(2*time.Hour), t0.Add(3*time.Hour)), artifact)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range f.approvers[1:] {
		if _, err := client.Approve(ctx, approved.ID, k); err != nil {
			t.Fatal(err)
		}
	}
	anchor, err := TrustRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	cer, err := client.Ready(ctx, approved.ID, f.peers[1], t.TempDir(), anchor)
	if err != nil || len(cer.Readiness) != 1 || cer.Readiness[0].Status != events.OTAReady {
		t.Fatalf("out-of-band readiness: %v, %+v", err, cer.Readiness)
	}
	// Only 1 of 3 peers ready: activation time passes without activation.
	clk.Advance(2 * time.Hour)
	eventually(t, "ceremony waits", ceremonyIs(t, client, approved.ID, events.OTAStateCollecting))

	clk.Advance(time.Hour)
	eventually(t, "timed out", func() (bool, string) {
		cer, err := client.Ceremony(ctx, approved.ID)
		return err == nil && cer.State == events.OTAStateAborted && cer.AbortReason == events.OTAAbortTimedOut, jsonString(cer)
	})
	eventually(t, "insufficient approvals", func() (bool, string) {
		cer, err := client.Ceremony(ctx, unapproved.ID)
		return err == nil && cer.State == events.OTAStateAborted && cer.AbortReason == events.OTAAbortInsufficientApprovals, jsonString(cer)
	})
	if _, err := client.Approve(ctx, approved.ID, f.approvers[0]); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("approval after abort: %v; want conflict", err)
	}
	if active, err := events.LoadActiveVersion(ctx, h.JS); err != nil || active.Protocol != 1 {
		t.Fatalf("active version after aborts: %+v, %v", active, err)
	}
}

// TestReplayRebuildsState drives every kind of event through the service,
// rotation and manual abort included, then rebuilds the ledger from the
// stream alone and from a restarted service.
func TestReplayRebuildsState(t *testing.T) {
	f := newFleet()
	h := bustest.Start(t, bus.EmbeddedConfig{LazySync: true})
	clk := clock.NewFake(t0)
	root := mustSign(t, f.rootPolicy(1), f.root[0], f.root[1])
	sites := startPeers(t, h, clk, root, true, f.peers...)
	ctx := context.Background()
	client := &Client{Conn: h.Conn, Authority: releaseAuthority, Direct: true}

	first, err := client.Propose(ctx, NewProposal("factsync", "v1.1.0", events.OTASoftFork, 0, artifact, t0.Add(time.Hour), t0.Add(2*time.Hour)), artifact)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Abort(ctx, first.ID, "wrong build"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Abort(ctx, first.ID, "again"); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("second abort: %v; want conflict", err)
	}
	second, err := client.Propose(ctx, NewProposal("factsync", "v1.2.0", events.OTASoftFork, 0, artifact, t0.Add(time.Hour), t0.Add(2*time.Hour)), artifact)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range f.approvers[:2] {
		if _, err := client.Approve(ctx, second.ID, k); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "commit", ceremonyIs(t, client, second.ID, events.OTAStateCommitted))
	clk.Advance(time.Hour)
	eventually(t, "activation", ceremonyIs(t, client, second.ID, events.OTAStateActivated))

	rotated := f.rootPolicy(2)
	rotated.Approvers.Threshold = 3
	st, err := client.Rotate(ctx, mustSign(t, rotated, f.root...))
	if err != nil {
		t.Fatal(err)
	}
	if p, err := ParseRoot(st.Root); err != nil || p.Version != 2 {
		t.Fatalf("after rotation the service trusts %v (%v)", p, err)
	}
	if _, err := client.Rotate(ctx, mustSign(t, f.rootPolicy(1), f.root...)); !events.IsReason(err, events.ReasonRollback) {
		t.Fatalf("root rollback over the wire: %v; want rollback", err)
	}
	third, err := client.Propose(ctx, NewProposal("factsync", "v1.3.0", events.OTASoftFork, 0, artifact, clk.Now().Add(time.Hour), clk.Now().Add(2*time.Hour)), artifact)
	if err != nil {
		t.Fatal(err)
	}
	if third.Threshold != 3 {
		t.Fatalf("proposal after rotation needs %d approvals, want 3", third.Threshold)
	}

	anchor, err := TrustRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	replayed, _, err := Replay(ctx, h.JS, anchor)
	if err != nil {
		t.Fatal(err)
	}
	if replayed.Policy.Version != 2 || len(replayed.Ceremonies) != 3 || replayed.Ceremonies[first.ID].AbortReason != events.OTAAbortManual {
		t.Fatalf("replayed ledger: %s", ledgerJSON(t, replayed))
	}
	for _, s := range sites {
		eventually(t, "replicas agree with the replay", func() (bool, string) {
			got := ledgerJSON(t, s.svc.Ledger())
			return got == ledgerJSON(t, replayed), got
		})
	}
	// A service started later folds the same state from the stream.
	late := startPeers(t, h, clk, root, false, keyFrom("late-peer"))
	if got, want := ledgerJSON(t, late[0].svc.Ledger()), ledgerJSON(t, replayed); got != want {
		t.Fatalf("restarted service folded\n%s\nwant\n%s", got, want)
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
