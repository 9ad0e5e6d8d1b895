package main

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/keys"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/spf13/cobra"
)

// devTokenTTL is how long the demo device token lasts; `factsync dev`
// mints a fresh one at every start.
const devTokenTTL = 30 * 24 * time.Hour

func init() {
	commands = append(commands, func(g *globals) *cobra.Command {
		o := &serveOptions{}
		var peers int
		cmd := &cobra.Command{
			Use:   "dev",
			Short: "Run a local factsync stack: embedded NATS, every service, a demo authority",
			Long: `Run a local stack for development: an embedded NATS server with JetStream,
every factsync service, and a demo authority with a device key and token.

It writes DATA/context.json, which the client commands read, so a second
shell can use the stack at once. Ctrl-C stops it.

With --peers N it runs N such peers instead, under DATA/peer-<i>/ with a
context file each, linked to a mesh hub so they sync with each other.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				o.natsURL = ""
				if peers > 0 {
					return runDevPeers(cmd, o, peers)
				}
				demo, err := prepareDevRelease(o)
				if err != nil {
					return err
				}
				o.clientAuthorities = []events.AuthorityID{demo}
				st, err := startStack(cmd.Context(), o, nil)
				if err != nil {
					return err
				}
				ctxFile, sc, err := writeDevContext(o, st)
				if err != nil {
					st.close()
					return err
				}
				select {
				case <-st.runner.Ready():
				case <-cmd.Context().Done():
				}
				printDevBanner(cmd.OutOrStdout(), st, ctxFile, sc)
				return st.wait(cmd.Context())
			},
		}
		o.addFlags(cmd, "127.0.0.1:8080")
		cmd.Flags().IntVar(&peers, "peers", 0, "run N peers (DATA/peer-<i>, each its own embedded NATS and JetStream domain) linked by leafnodes to a hub on loopback")
		return cmd
	})
}

// prepareDevRelease gives the dev stack a release policy, so the ota
// service runs: the demo authority releases, three approver keys with a
// threshold of two, and this peer as the one peer whose readiness counts.
//
// It returns the demo authority, creating its key on first use.
func prepareDevRelease(o *serveOptions) (events.AuthorityID, error) {
	authority, _, err := keys.LoadOrGenerate(filepath.Join(o.data, "authority.key"), keys.Authority)
	if err != nil {
		return "", err
	}
	demo := events.AuthorityIDOf(authority.Public().(ed25519.PublicKey))
	if _, err := os.Stat(o.releaseFile()); err == nil {
		return demo, nil
	}
	peer, _, err := keys.LoadOrGenerate(filepath.Join(o.data, "peer.key"), keys.Peer)
	if err != nil {
		return "", err
	}
	_, err = makeRelease(releaseSpec{
		authority: demo,
		dir:       filepath.Dir(o.releaseFile()),
		approvers: 3, threshold: 2,
		peers: []ed25519.PublicKey{peer.Public().(ed25519.PublicKey)}, quorum: 1,
		expires: 365 * 24 * time.Hour, minNotice: 10 * time.Second,
	})
	return demo, err
}

// writeDevContext makes (or reuses) the demo authority and device keys in
// the data directory, mints a device token for them, and writes the
// context file.
func writeDevContext(o *serveOptions, st *stack) (string, stackContext, error) {
	dir, err := filepath.Abs(o.data)
	if err != nil {
		return "", stackContext{}, err
	}
	authKeyFile, devKeyFile, tokenFile := filepath.Join(dir, "authority.key"), filepath.Join(dir, "device.key"), filepath.Join(dir, "device.token")
	authority, _, err := keys.LoadOrGenerate(authKeyFile, keys.Authority)
	if err != nil {
		return "", stackContext{}, err
	}
	device, _, err := keys.LoadOrGenerate(devKeyFile, keys.Device)
	if err != nil {
		return "", stackContext{}, err
	}
	rights := make([]capability.Right, 0, len(capability.Ops))
	for _, op := range capability.Ops {
		rights = append(rights, capability.Right{Collection: capability.AnyCollection, Op: op})
	}
	token, err := capability.Mint(authority, device.Public().(ed25519.PublicKey), rights, time.Now().Add(devTokenTTL))
	if err != nil {
		return "", stackContext{}, err
	}
	if err := writeToken(tokenFile, token); err != nil {
		return "", stackContext{}, err
	}
	sc := stackContext{
		NATSURL:         st.clientURL,
		NATSOpsURL:      st.opsURL,
		NATSInboxPrefix: natsauth.InboxPrefix("client"),
		HTTPURL:         "http://" + st.httpAddr(),
		Peer:            st.peer,
		PeerKey:         hex.EncodeToString(st.peerKey),
		Authority:       events.AuthorityIDOf(authority.Public().(ed25519.PublicKey)),
		AuthorityKey:    authKeyFile,
		DeviceKey:       devKeyFile,
		Token:           tokenFile,
	}
	ctxFile := filepath.Join(dir, "context.json")
	if err := writeContext(ctxFile, sc); err != nil {
		return "", stackContext{}, fmt.Errorf("write context file: %w", err)
	}
	return ctxFile, sc, nil
}

func printDevBanner(w io.Writer, st *stack, ctxFile string, sc stackContext) {
	var status []string
	for _, s := range st.runner.Status() {
		status = append(status, s.Name+" "+string(s.State))
	}
	ctxHint := ""
	if ctxFile != mustAbs(defaultContextFile) {
		ctxHint = fmt.Sprintf("export FACTSYNC_CONTEXT=%s\n  ", ctxFile)
	}
	fmt.Fprintf(w, `factsync dev is running.

  services    %s
  NATS        %s
  status      %s/readyz   metrics %s/metrics
  peer        %s
  authority   %s (demo; key and device token in %s)
  context     %s

From another shell:
  %sgo run ./cmd/factsync put notes n1 title='"hello"' priority=2
  go run ./cmd/factsync query notes --where 'priority >= 2'
  go run ./cmd/factsync watch notes
  go tool nats --server '%s' stream ls

Ctrl-C stops the stack.
`, strings.Join(status, ", "), redactURL(sc.NATSURL), sc.HTTPURL, sc.HTTPURL, sc.Peer, sc.Authority, filepath.Dir(ctxFile), ctxFile, ctxHint, sc.NATSOpsURL)
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}
