package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/keys"
	"github.com/spf13/cobra"
)

// `factsync peers`, `factsync peers add <peer>`, `factsync sync <peer>`
// and `factsync sync status` ask
// the local anti-entropy service, through the local guard, with the
// context's device token (it needs the `sync` right).

func init() { commands = append(commands, newPeersCommand, newSyncCommand) }

// syncFlags choose the authority the commands act for.
type syncFlags struct {
	authority string
	token     string
}

func (f *syncFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.authority, "authority", "", "authority public key (key file or 64 hex characters); default the context's")
	cmd.Flags().StringVar(&f.token, "token", "", "token file rooted at --authority with the sync right; default the context's")
}

// open connects as the context's client, for the chosen authority.
func (f *syncFlags) open(ctx context.Context, g *globals) (*apiClient, error) {
	c, _, err := openAPI(ctx, g)
	if err != nil || f.authority == "" && f.token == "" {
		return c, err
	}
	if f.authority != "" {
		pub, err := readPublicKey(f.authority, keys.Authority)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.authority = events.AuthorityIDOf(pub)
		c.header.Set(events.HeaderAuthorityKey, hex.EncodeToString(pub))
	}
	if f.token != "" {
		tok, err := readToken(f.token)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(tok))
	}
	return c, nil
}

func (f *syncFlags) status(ctx context.Context, g *globals) (events.SyncStatus, error) {
	var st events.SyncStatus
	c, err := f.open(ctx, g)
	if err != nil {
		return st, err
	}
	defer c.Close()
	_, err = c.call(ctx, events.AntiEntropyProto, events.AntiEntropyOpStatus, struct{}{}, &st)
	return st, err
}

func newPeersCommand(g *globals) *cobra.Command {
	var f syncFlags
	cmd := &cobra.Command{
		Use:   "peers",
		Short: "List the peers this stack knows, static and discovered: presence, score, successes, failures, backoff",
		Long: `List the peers this stack knows: the static ones (DATA/peers.txt, or added
with 'factsync peers add') and those discovered by their heartbeats. STATE
is present while the peer's key is in the presence bucket (heard within
three of its heartbeat intervals), lost once it expired, and not heard for
a static peer never heard. The bucket itself: go tool nats kv ls peer_presence`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := f.status(cmd.Context(), g)
			if err != nil {
				return err
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(st.Peers, func(w io.Writer) { printPeers(w, st) })
			return nil
		},
	}
	f.add(cmd)
	var af syncFlags
	add := &cobra.Command{
		Use:   "add <peer>",
		Short: "Add a static peer, which this stack then syncs with at once and on every interval",
		Long: `Add a static peer by its id. The peer must answer on the mesh now; the
stack keeps it in its peer_static bucket (it survives restarts) and syncs
with it at once. Needs the sync right. Remove it with
go tool nats kv del peer_static <peer>.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			peer := events.PeerID(args[0])
			if err := peer.Validate(); err != nil {
				return usageErrorf("%q is not a peer id (see 'factsync peers')", args[0])
			}
			c, err := af.open(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer c.Close()
			var ps events.PeerStatus
			if _, err := c.call(cmd.Context(), events.AntiEntropyProto, events.AntiEntropyOpAddPeer, events.AddPeerRequest{Peer: peer}, &ps); err != nil {
				return err
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(ps, func(w io.Writer) {
				fmt.Fprintf(w, "added static peer %s (%s); a sync with it has started\n", ps.Peer, peerState(ps))
			})
			return nil
		},
	}
	af.add(add)
	cmd.AddCommand(add)
	return cmd
}

// peerState says whether a peer is heard now.
func peerState(p events.PeerStatus) string {
	switch {
	case p.Present:
		return "present"
	case !p.LastSeen.IsZero():
		return "lost"
	}
	return "not heard"
}

// peerSource says where this stack learned of a peer.
func peerSource(p events.PeerStatus) string {
	switch {
	case p.Added:
		return "added"
	case p.Static:
		return "config"
	}
	return "discovered"
}

func printPeers(w io.Writer, st events.SyncStatus) {
	if len(st.Peers) == 0 {
		fmt.Fprintf(w, "peer %s knows no other peer yet\n", st.Peer)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tSOURCE\tSTATE\tLAST SEEN\tSCORE\tOK\tFAILED\tLATENCY\tRETRY AT")
	for _, p := range st.Peers {
		seen, retry := "-", "-"
		if !p.LastSeen.IsZero() {
			seen = p.LastSeen.Format(time.TimeOnly)
		}
		if !p.RetryAt.IsZero() {
			retry = p.RetryAt.Format(time.TimeOnly)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%d\t%d\t%.0fms\t%s\n", p.Peer, peerSource(p), peerState(p), seen, p.Score, p.Successes, p.Failures, p.LatencyMillis, retry)
	}
	_ = tw.Flush()
}

func newSyncCommand(g *globals) *cobra.Command {
	var f syncFlags
	cmd := &cobra.Command{
		Use:   "sync <peer>",
		Short: "Sync the authority with a peer now; prints rounds, bytes each way and facts moved",
		Example: `  factsync sync QX3M...          # one peer
  factsync sync status             # peers and recent sessions`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			peer := events.PeerID(args[0])
			if err := peer.Validate(); err != nil {
				return usageErrorf("%q is not a peer id (see 'factsync peers')", args[0])
			}
			c, err := f.open(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer c.Close()
			var reply events.SyncReply
			if _, err := c.call(cmd.Context(), events.AntiEntropyProto, events.AntiEntropyOpSync, events.SyncRequest{Peer: peer}, &reply); err != nil {
				return err
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(reply, func(w io.Writer) { printSessions(w, reply.Sessions) })
			for _, s := range reply.Sessions {
				if s.State == events.SessionFailed {
					return events.Errorf(events.Reason(s.Reason), "sync with %s failed: %s", s.Peer, s.Error)
				}
			}
			return nil
		},
	}
	f.add(cmd)
	var sf syncFlags
	status := &cobra.Command{
		Use:   "status",
		Short: "Peers, open sessions and the recent sessions of this stack",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := sf.status(cmd.Context(), g)
			if err != nil {
				return err
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(st, func(w io.Writer) {
				fmt.Fprintf(w, "peer %s, %d responder sessions open\n", st.Peer, st.Open)
				if !st.Initiates {
					fmt.Fprintln(w, "it holds no sync token for this authority, so it only answers other peers' sessions")
				}
				fmt.Fprintln(w)
				printPeers(w, st)
				fmt.Fprintln(w)
				printSessions(w, st.Sessions)
			})
			return nil
		},
	}
	sf.add(status)
	cmd.AddCommand(status)
	return cmd
}

func printSessions(w io.Writer, ss []events.SyncReport) {
	if len(ss) == 0 {
		fmt.Fprintln(w, "no sessions yet")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tSTATE\tMODE\tROUNDS\tBYTES OUT\tBYTES IN\tPULLED\tPUSHED\tTOOK\tERROR")
	for _, s := range ss {
		mode := s.Mode
		if s.Fallback {
			mode += " (riblt fell back)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Peer, s.State, mode, s.Rounds, s.BytesOut, s.BytesIn, s.Pulled, s.Pushed, s.Duration, s.Error)
	}
	_ = tw.Flush()
}
