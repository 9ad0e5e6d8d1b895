package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/ota"
	"github.com/factsync/factsync/shared/keys"
)

// `factsync dev --peers 3` gives every peer the same release policy: each
// peer's key reports readiness, all three must be ready, and peer-0
// coordinates; a second start keeps it.
func TestMeshReleaseIsSharedAndCoordinatedByPeer0(t *testing.T) {
	data := t.TempDir()
	authority, _, err := keys.LoadOrGenerate(filepath.Join(data, "authority.key"), keys.Authority)
	if err != nil {
		t.Fatal(err)
	}
	base := &serveOptions{data: data}
	var peers []ed25519.PublicKey
	for i := range 3 {
		key, _, err := keys.LoadOrGenerate(filepath.Join(devPeerData(base, i), "peer.key"), keys.Peer)
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, key.Public().(ed25519.PublicKey))
	}
	if err := prepareMeshRelease(base, peers, authority); err != nil {
		t.Fatal(err)
	}
	var first []byte
	for i := range 3 {
		dir := devPeerData(base, i)
		b, err := os.ReadFile(filepath.Join(dir, "ota", "root.json"))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = b
		} else if !bytes.Equal(b, first) {
			t.Fatalf("peer %d trusts another release policy than peer 0", i)
		}
		var rel release
		if err := json.Unmarshal(b, &rel); err != nil {
			t.Fatal(err)
		}
		peer, err := keys.LoadPublic(filepath.Join(dir, "peer.key"), keys.Peer)
		if err != nil {
			t.Fatal(err)
		}
		policy, err := ota.TrustRoot(rel.Root)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(policy.Peers.Keys, hex.EncodeToString(peer)) || policy.Peers.Threshold != 3 {
			t.Fatalf("peer %d: readiness role %+v does not list its key with a quorum of 3", i, policy.Peers)
		}
		if i == 0 && rel.Coordinator != events.PeerIDOf(peer) {
			t.Fatalf("coordinator %s, want peer-0 (%s)", rel.Coordinator, events.PeerIDOf(peer))
		}
		if rel.Authority != events.AuthorityIDOf(authority.Public().(ed25519.PublicKey)) {
			t.Fatalf("release authority %s is not the demo authority", rel.Authority)
		}
	}
	if err := prepareMeshRelease(base, peers, authority); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(devPeerData(base, 2), "ota", "root.json")); !bytes.Equal(again, first) {
		t.Fatal("a second start replaced the peers' release policy")
	}
}
