package main

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/keys"
	"github.com/factsync/factsync/shared/mesh"
	"github.com/spf13/cobra"
)

// runDevPeers is `factsync dev --peers N`: a mesh hub on loopback and N
// peers, each a whole stack with its own embedded server and JetStream
// domain (peer-<i>) under DATA/peer-<i>/, linked to the hub by a
// leafnode. Every peer holds the same demo authority, a device token of
// its own (in its context file) and a sync token for its peer key, so the
// peers discover each other by presence and converge.
func runDevPeers(cmd *cobra.Command, base *serveOptions, n int) error {
	ctx := cmd.Context()
	authority, _, err := keys.LoadOrGenerate(filepath.Join(base.data, "authority.key"), keys.Authority)
	if err != nil {
		return err
	}
	// The hub scopes each peer's link to its peer id, so the ids come
	// first: each peer's key, kept under its data directory.
	ids := make([]events.PeerID, n)
	pubs := make([]ed25519.PublicKey, n)
	for i := range n {
		key, _, err := keys.LoadOrGenerate(filepath.Join(devPeerData(base, i), "peer.key"), keys.Peer)
		if err != nil {
			return err
		}
		pubs[i] = key.Public().(ed25519.PublicKey)
		ids[i] = events.PeerIDOf(pubs[i])
	}
	if err := prepareMeshRelease(base, pubs, authority); err != nil {
		return err
	}
	hub, err := mesh.StartHub(mesh.HubConfig{Peers: ids})
	if err != nil {
		return err
	}
	defer hub.Close()
	var stacks []*stack
	defer func() {
		for _, st := range stacks {
			st.close()
		}
	}()
	var contexts []string
	for i := range n {
		o := *base
		o.data = devPeerData(base, i)
		o.natsPort, o.httpAddr, o.domain = -1, "127.0.0.1:0", mesh.PeerDomain(i)
		o.meshInboxPrefix = hub.InboxPrefix(i)
		if o.configureNATS, err = hub.Link(i); err != nil {
			return err
		}
		st, ctxFile, err := startDevPeer(ctx, &o, authority)
		if err != nil {
			return fmt.Errorf("peer %d: %w", i, err)
		}
		stacks = append(stacks, st)
		contexts = append(contexts, ctxFile)
	}
	for _, st := range stacks {
		select {
		case <-st.runner.Ready():
		case <-ctx.Done():
		}
	}
	printDevPeersBanner(cmd.OutOrStdout(), stacks, contexts)
	<-ctx.Done()
	var errs []error
	for _, st := range stacks {
		errs = append(errs, st.runner.Wait())
	}
	return errors.Join(errs...)
}

// devPeerData is peer i's data directory.
func devPeerData(base *serveOptions, i int) string {
	return filepath.Join(base.data, fmt.Sprintf("peer-%d", i))
}

// prepareMeshRelease gives the dev mesh one release policy, so that a
// ceremony spans every peer: the demo authority releases, three approver
// keys (DATA/release/approver-*.key) with a threshold of two, every peer's
// key (peers[i] is peer i's) reports readiness and all must be ready, and
// peer-0 coordinates (docs/ota.md, "Across the mesh"). Each peer gets a
// copy as its DATA/peer-<i>/ota/root.json, unless it has a policy already.
func prepareMeshRelease(base *serveOptions, peers []ed25519.PublicKey, authority ed25519.PrivateKey) error {
	n := len(peers)
	shared := filepath.Join(base.data, "release", "root.json")
	if _, err := os.Stat(shared); errors.Is(err, os.ErrNotExist) {
		if _, err := makeRelease(releaseSpec{
			authority:   events.AuthorityIDOf(authority.Public().(ed25519.PublicKey)),
			coordinator: events.PeerIDOf(peers[0]),
			dir:         filepath.Dir(shared),
			approvers:   3, threshold: 2,
			peers: peers, quorum: n,
			expires: 365 * 24 * time.Hour, minNotice: 10 * time.Second,
		}); err != nil {
			return err
		}
	}
	policy, err := os.ReadFile(shared)
	if err != nil {
		return err
	}
	for i := range n {
		target := filepath.Join(devPeerData(base, i), "ota", "root.json")
		if _, err := os.Stat(target); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(target, policy, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// startDevPeer starts one peer of the dev mesh with the shared demo
// authority.
func startDevPeer(ctx context.Context, o *serveOptions, authority ed25519.PrivateKey) (*stack, string, error) {
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return nil, "", err
	}
	authFile := filepath.Join(o.data, "authority.key")
	if _, err := os.Stat(authFile); errors.Is(err, os.ErrNotExist) {
		if err := keys.Save(authFile, keys.Authority, authority); err != nil {
			return nil, "", err
		}
	}
	demo, err := prepareDevRelease(o)
	if err != nil {
		return nil, "", err
	}
	o.clientAuthorities = []events.AuthorityID{demo}
	peerKey, _, err := keys.LoadOrGenerate(filepath.Join(o.data, "peer.key"), keys.Peer)
	if err != nil {
		return nil, "", err
	}
	if err := writeSyncToken(o.data, authority, peerKey.Public().(ed25519.PublicKey)); err != nil {
		return nil, "", err
	}
	st, err := startStack(ctx, o, nil)
	if err != nil {
		return nil, "", err
	}
	ctxFile, _, err := writeDevContext(o, st)
	if err != nil {
		st.close()
		return nil, "", err
	}
	return st, ctxFile, nil
}

// writeSyncToken mints the peer's sync token for the authority into the
// directory the anti-entropy service reads.
func writeSyncToken(data string, authority ed25519.PrivateKey, peer ed25519.PublicKey) error {
	token, err := capability.Mint(authority, peer, []capability.Right{{Collection: capability.AnyCollection, Op: capability.OpSync}}, time.Now().Add(devTokenTTL))
	if err != nil {
		return err
	}
	dir := syncTokenDir(data)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return writeToken(filepath.Join(dir, hex.EncodeToString(authority.Public().(ed25519.PublicKey))+".token"), token)
}

func printDevPeersBanner(w io.Writer, stacks []*stack, contexts []string) {
	fmt.Fprintf(w, "factsync dev is running %d peers linked by leafnodes to a hub on loopback.\n\n", len(stacks))
	for i, st := range stacks {
		fmt.Fprintf(w, "  peer-%d  %s\n          NATS %s  status http://%s/readyz\n          export FACTSYNC_CONTEXT=%s\n",
			i, st.peer, redactURL(st.clientURL), st.httpAddr(), contexts[i])
	}
	fmt.Fprintf(w, `
From another shell, with one peer's context:
  go run ./cmd/factsync put notes n1 title='"hello"'
  go run ./cmd/factsync peers
  go run ./cmd/factsync sync <peer id>
  go run ./cmd/factsync sync status

OTA: one release policy for the mesh (DATA/release/), peer-0 coordinates,
and every peer must report ready:
  go run ./cmd/factsync ota propose --version v1.1.0 --artifact FILE --activate-at +30s
  go run ./cmd/factsync ota approve <id> --key DATA/release/approver-1.key   (and approver-2)
  go run ./cmd/factsync ota ready <id>                                      (with each peer's context)

Ctrl-C stops every peer.
`)
}
