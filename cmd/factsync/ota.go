package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/ota"
	"github.com/factsync/factsync/shared/keys"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newOTACommand) }

func newOTACommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ota",
		Short: "Threshold-approved upgrades: init, propose, approve, ready, status, abort",
		Long: `Upgrade coordination. A release policy (root keys, approver keys and their
threshold, the peers that report readiness and their quorum) is made once
with 'ota init'. A release is proposed with its artifact, approved by a
threshold of approvers, staged by the peers, and activates at its time when
the readiness quorum is met before the deadline.`,
	}
	cmd.AddCommand(newOTAInit(g), newOTAPropose(g), newOTAApprove(g), newOTAReady(g), newOTAStatus(g), newOTAAbort(g))
	return cmd
}

// releaseSpec describes a release policy to make.
type releaseSpec struct {
	authority   events.AuthorityID
	coordinator events.PeerID
	dir         string
	approvers   int
	threshold   int
	peers       []ed25519.PublicKey
	quorum      int
	expires     time.Duration
	minNotice   time.Duration
}

// makeRelease creates approver keys (which also serve as root keys) in dir
// and a root policy signed by all of them, and writes dir/root.json.
func makeRelease(s releaseSpec) (string, error) {
	if s.threshold < 1 || s.threshold > s.approvers {
		return "", usageErrorf("--threshold must be between 1 and --approvers (%d)", s.approvers)
	}
	if s.quorum < 1 || s.quorum > len(s.peers) {
		return "", usageErrorf("--quorum must be between 1 and the number of --peer keys (%d)", len(s.peers))
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return "", err
	}
	root := events.OTARoot{
		Type: "factsync-ota-root", Version: 1, Expires: time.Now().Add(s.expires).UTC(), MinNotice: s.minNotice,
		Root:      events.OTARole{Threshold: s.threshold},
		Approvers: events.OTARole{Threshold: s.threshold},
		Peers:     events.OTARole{Threshold: s.quorum},
	}
	var signers []ed25519.PrivateKey
	for i := 1; i <= s.approvers; i++ {
		key, _, err := keys.LoadOrGenerate(filepath.Join(s.dir, fmt.Sprintf("approver-%d.key", i)), keys.Approver)
		if err != nil {
			return "", err
		}
		pub := hex.EncodeToString(key.Public().(ed25519.PublicKey))
		root.Root.Keys = append(root.Root.Keys, pub)
		root.Approvers.Keys = append(root.Approvers.Keys, pub)
		signers = append(signers, key)
	}
	for _, p := range s.peers {
		root.Peers.Keys = append(root.Peers.Keys, hex.EncodeToString(p))
	}
	signed, err := ota.SignRoot(root, signers...)
	if err != nil {
		return "", err
	}
	b, _ := json.MarshalIndent(release{Authority: s.authority, Coordinator: s.coordinator, Root: signed}, "", "  ")
	path := filepath.Join(s.dir, "root.json")
	return path, os.WriteFile(path, b, 0o600)
}

func newOTAInit(g *globals) *cobra.Command {
	var authority, coordinator, out string
	var peers []string
	var approvers, threshold, quorum int
	var expires, minNotice time.Duration
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make a release policy: approver keys and a signed root policy",
		Example: `  factsync ota init --authority-key authority.key --peer peer-a.key --peer peer-b.key --peer peer-c.key \
    --coordinator peer-a.key --approvers 3 --threshold 2 --quorum 3 --out release/
  factsync serve ota --ota-root release/root.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			auth, err := readPublicKey(authority, keys.Authority)
			if err != nil {
				return err
			}
			spec := releaseSpec{authority: events.AuthorityIDOf(auth), dir: out, approvers: approvers, threshold: threshold, quorum: quorum, expires: expires, minNotice: minNotice}
			for _, p := range peers {
				pub, err := readPublicKey(p, keys.Peer)
				if err != nil {
					return err
				}
				spec.peers = append(spec.peers, pub)
			}
			if coordinator != "" {
				pub, err := readPublicKey(coordinator, keys.Peer)
				if err != nil {
					return err
				}
				spec.coordinator = events.PeerIDOf(pub)
			}
			path, err := makeRelease(spec)
			if err != nil {
				return err
			}
			res := map[string]any{"root": mustAbs(path), "authority": spec.authority, "approvers": approvers, "threshold": threshold, "quorum": quorum}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(res, func(w io.Writer) {
				fmt.Fprintf(w, "release policy written to %s (approver keys beside it: keep them apart in production)\n", res["root"])
			})
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&authority, "authority-key", "", "the release authority: a key file or hex public key (required)")
	f.StringArrayVar(&peers, "peer", nil, "a peer that reports readiness: peer key file or hex public key; repeatable (required)")
	f.StringVar(&coordinator, "coordinator", "", "the peer whose OTA stream is the ceremonies' log, for peers on a mesh: peer key file or hex public key (default: each peer coordinates its own)")
	f.IntVar(&approvers, "approvers", 3, "approver keys to make")
	f.IntVar(&threshold, "threshold", 2, "approvals a release needs")
	f.IntVar(&quorum, "quorum", 1, "ready peers activation needs")
	f.DurationVar(&expires, "expires", 365*24*time.Hour, "how long the root policy may be trusted")
	f.DurationVar(&minNotice, "min-notice", time.Minute, "least time between a proposal and its activation")
	f.StringVar(&out, "out", "release", "directory for root.json and the approver keys")
	_ = cmd.MarkFlagRequired("authority-key")
	_ = cmd.MarkFlagRequired("peer")
	return cmd
}

// otaClient makes a client for the release authority named by --authority
// (default: the context's authority), acting with the context's token.
func otaClient(ctx context.Context, g *globals, authorityKey string) (*ota.Client, func(), error) {
	sc, err := readContext(g.contextFile)
	if err != nil {
		return nil, nil, err
	}
	if authorityKey == "" {
		authorityKey = sc.AuthorityKey
	}
	auth, err := readPublicKey(authorityKey, keys.Authority)
	if err != nil {
		return nil, nil, err
	}
	token, err := readToken(sc.Token)
	if err != nil {
		return nil, nil, err
	}
	nc, err := connectClient(ctx, sc)
	if err != nil {
		return nil, nil, err
	}
	return &ota.Client{Conn: nc, Authority: events.AuthorityIDOf(auth), AuthorityKey: auth, Token: token}, nc.Close, nil
}

// withOTA runs fn with a client and prints the ceremony it returns.
func withOTA(cmd *cobra.Command, g *globals, authorityKey string, fn func(*ota.Client) (events.OTACeremony, error)) error {
	c, closeConn, err := otaClient(cmd.Context(), g, authorityKey)
	if err != nil {
		return err
	}
	defer closeConn()
	cer, err := fn(c)
	if err != nil {
		return err
	}
	g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(cer, func(w io.Writer) { printCeremony(w, cer) })
	return nil
}

func printCeremony(w io.Writer, c events.OTACeremony) {
	fmt.Fprintf(w, "%s\n  state      %s", c, c.State)
	if c.AbortReason != "" {
		fmt.Fprintf(w, " (%s: %s)", c.AbortReason, c.Detail)
	}
	fmt.Fprintf(w, "\n  activate   %s   deadline %s\n", c.Proposal.ActivateAt.Format(time.RFC3339), c.Proposal.Deadline.Format(time.RFC3339))
	fmt.Fprintf(w, "  approvals  %d of %d needed\n", len(c.Approvals), c.Threshold)
	for _, a := range c.Approvals {
		fmt.Fprintf(w, "    %s\n", a.Signature.KeyID)
	}
	fmt.Fprintf(w, "  readiness  %d ready of %d needed\n", countReady(c), c.Quorum)
	for _, r := range c.Readiness {
		reason := ""
		if r.Reason != "" {
			reason = ": " + r.Reason
		}
		fmt.Fprintf(w, "    %-26s %s%s\n", r.Signature.KeyID, r.Status, reason)
	}
}

func countReady(c events.OTACeremony) int {
	n := 0
	for _, r := range c.Readiness {
		if r.Status == events.OTAReady {
			n++
		}
	}
	return n
}

func newOTAPropose(g *globals) *cobra.Command {
	var pkg, version, kind, artifactFile, authority string
	var protocol uint32
	var activateAt string
	var deadline time.Duration
	cmd := &cobra.Command{
		Use:     "propose",
		Short:   "Propose a release (needs the ota:propose right)",
		Example: `  factsync ota propose --package factsync --version 1.2.0 --artifact ./factsync --kind hard --protocol 2 --activate-at +10m`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			artifact, err := os.ReadFile(artifactFile)
			if err != nil {
				return usageErrorf("--artifact: %v", err)
			}
			at, err := parseWhen(activateAt)
			if err != nil {
				return err
			}
			k := events.OTAKind(kind)
			if k != events.OTASoftFork && k != events.OTAHardFork {
				return usageErrorf("--kind must be %s or %s", events.OTASoftFork, events.OTAHardFork)
			}
			prop := ota.NewProposal(pkg, version, k, protocol, artifact, at, at.Add(deadline))
			return withOTA(cmd, g, authority, func(c *ota.Client) (events.OTACeremony, error) {
				return c.Propose(cmd.Context(), prop, artifact)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&pkg, "package", "factsync", "package name")
	f.StringVar(&version, "version", "", "version; must be above every earlier one (required)")
	f.StringVar(&artifactFile, "artifact", "", "the artifact file (required)")
	f.StringVar(&kind, "kind", "soft", "soft (compatible) or hard (changes the sync protocol version)")
	f.Uint32Var(&protocol, "protocol", 0, "the new sync protocol version of a hard fork")
	f.StringVar(&activateAt, "activate-at", "+10m", "activation time: RFC 3339, or +duration from now")
	f.DurationVar(&deadline, "deadline", time.Hour, "how long after the activation time the ceremony may still complete")
	f.StringVar(&authority, "authority", "", "release authority key file or hex key (default: the context's)")
	_ = cmd.MarkFlagRequired("version")
	_ = cmd.MarkFlagRequired("artifact")
	return cmd
}

// parseWhen reads an RFC 3339 time or "+duration" from now.
func parseWhen(s string) (time.Time, error) {
	if rest, ok := strings.CutPrefix(s, "+"); ok {
		d, err := time.ParseDuration(rest)
		if err != nil {
			return time.Time{}, usageErrorf("time %q: %v", s, err)
		}
		return time.Now().Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageErrorf("time %q is neither RFC 3339 nor +duration", s)
	}
	return t, nil
}

func newOTAApprove(g *globals) *cobra.Command {
	var keyFile, authority string
	cmd := &cobra.Command{
		Use:   "approve PROPOSAL_ID --key APPROVER_KEY",
		Short: "Sign a proposal with an approver key (needs the ota:approve right)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := keys.Load(keyFile, keys.Approver)
			if err != nil {
				return err
			}
			return withOTA(cmd, g, authority, func(c *ota.Client) (events.OTACeremony, error) {
				return c.Approve(cmd.Context(), args[0], key)
			})
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "approver key file (required)")
	cmd.Flags().StringVar(&authority, "authority", "", "release authority key file or hex key (default: the context's)")
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func newOTAReady(g *globals) *cobra.Command {
	var peerKey, dir, authority, anchor string
	cmd := &cobra.Command{
		Use:   "ready PROPOSAL_ID",
		Short: "Fetch, verify and stage a release on this peer, and report readiness",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := readContext(g.contextFile)
			if err != nil {
				return err
			}
			if peerKey == "" {
				peerKey = filepath.Join(filepath.Dir(sc.AuthorityKey), "peer.key")
			}
			key, err := keys.Load(peerKey, keys.Peer)
			if err != nil {
				return err
			}
			return withOTA(cmd, g, authority, func(c *ota.Client) (events.OTACeremony, error) {
				st, err := c.Status(cmd.Context(), args[0])
				if err != nil {
					return events.OTACeremony{}, err
				}
				trusted, err := trustedRoot(anchor, st.Root, cmd.ErrOrStderr())
				if err != nil {
					return events.OTACeremony{}, err
				}
				return c.Ready(cmd.Context(), args[0], key, dir, trusted)
			})
		},
	}
	cmd.Flags().StringVar(&peerKey, "peer-key", "", "this peer's key file (default: peer.key beside the context's keys)")
	cmd.Flags().StringVar(&anchor, "root", "", "the release policy this device trusts (a root.json from 'factsync ota init'); without it the service's policy is trusted on first use")
	cmd.Flags().StringVar(&dir, "stage-dir", "staged", "where to stage the artifact")
	cmd.Flags().StringVar(&authority, "authority", "", "release authority key file or hex key (default: the context's)")
	return cmd
}

func newOTAStatus(g *globals) *cobra.Command {
	var authority string
	cmd := &cobra.Command{
		Use:   "status [PROPOSAL_ID]",
		Short: "Show the active protocol version and the ceremonies' approvals and readiness",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, closeConn, err := otaClient(cmd.Context(), g, authority)
			if err != nil {
				return err
			}
			defer closeConn()
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			st, err := c.Status(cmd.Context(), id)
			if err != nil {
				return err
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(st, func(w io.Writer) {
				fmt.Fprintf(w, "active protocol %d", st.Active.Protocol)
				if st.Active.Version != "" {
					fmt.Fprintf(w, " (%s %s since %s)", st.Active.Package, st.Active.Version, st.Active.ActivatedAt.Format(time.RFC3339))
				}
				fmt.Fprintln(w)
				for _, cer := range st.Ceremonies {
					fmt.Fprintln(w)
					printCeremony(w, cer)
				}
			})
			return nil
		},
	}
	cmd.Flags().StringVar(&authority, "authority", "", "release authority key file or hex key (default: the context's)")
	return cmd
}

func newOTAAbort(g *globals) *cobra.Command {
	var detail, authority string
	cmd := &cobra.Command{
		Use:   "abort PROPOSAL_ID",
		Short: "Abort a ceremony before it activates (reason manual)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withOTA(cmd, g, authority, func(c *ota.Client) (events.OTACeremony, error) {
				return c.Abort(cmd.Context(), args[0], detail)
			})
		},
	}
	cmd.Flags().StringVar(&detail, "detail", "aborted by an operator", "why")
	cmd.Flags().StringVar(&authority, "authority", "", "release authority key file or hex key (default: the context's)")
	return cmd
}

// trustedRoot is the root policy a release is verified against before it
// is staged. With an anchor file, the policy the service reports must be
// the anchor itself or its next rotation (signed by the anchor's root
// keys and its own), so a service, or anyone answering in its name,
// cannot hand the device a policy of its own making. Without one, the
// reported policy is only checked against its own keys, and the device
// says so.
func trustedRoot(anchorFile string, reported events.OTASignedRoot, warn io.Writer) (*ota.Policy, error) {
	if anchorFile == "" {
		fmt.Fprintln(warn, "warning: trusting the release policy the ota service reports (pass --root FILE to pin the one this device trusts)")
		return ota.TrustRoot(reported)
	}
	b, err := os.ReadFile(anchorFile)
	if err != nil {
		return nil, err
	}
	var rel release
	if err := json.Unmarshal(b, &rel); err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "release policy "+anchorFile)
	}
	anchor, err := ota.TrustRoot(rel.Root)
	if err != nil {
		return nil, fmt.Errorf("release policy %s: %w", anchorFile, err)
	}
	if bytes.Equal(rel.Root.Signed, reported.Signed) {
		return anchor, nil
	}
	next, err := anchor.Rotate(reported, time.Now())
	if err != nil {
		return nil, fmt.Errorf("the ota service reports a release policy that is neither %s nor its next rotation: %w", anchorFile, err)
	}
	return next, nil
}
