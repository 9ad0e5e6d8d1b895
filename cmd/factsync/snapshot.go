package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/snapshot/bench"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, newSnapshotCommand)
	benchCommands = append(benchCommands, newBenchBootstrap)
}

func newSnapshotCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Create, list, restore verifiable snapshots of an authority's journal, and prune the history they cover",
	}
	var authority string
	cmd.PersistentFlags().StringVar(&authority, "authority", "", "authority id (default: the context's authority)")
	cmd.AddCommand(newSnapshotCreate(g, &authority), newSnapshotList(g, &authority), newSnapshotRestore(g, &authority), newSnapshotPrune(g, &authority))
	return cmd
}

// openSnapshotAPI opens the API as the context's device and checks that
// --authority, when given, is the context's authority: requests carry the
// context's authority key and token.
func openSnapshotAPI(cmd *cobra.Command, g *globals, authority string) (*apiClient, error) {
	c, _, err := openAPI(cmd.Context(), g)
	if err != nil {
		return nil, err
	}
	if authority != "" && events.AuthorityID(authority) != c.authority {
		c.Close()
		return nil, usageErrorf("--authority %s is not the context's authority %s, whose key and token the request carries", authority, c.authority)
	}
	return c, nil
}

func newSnapshotCreate(g *globals, authority *string) *cobra.Command {
	var cut uint32
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Snapshot the authority now: propose, gather approvals, commit at the threshold",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := openSnapshotAPI(cmd, g, *authority)
			if err != nil {
				return err
			}
			defer c.Close()
			var info events.SnapshotInfo
			if _, err := c.call(cmd.Context(), events.SnapshotProto, events.SnapshotOpCreate, events.SnapshotCreateRequest{Collection: "*", CutSeconds: cut}, &info); err != nil {
				return err
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(info, func(w io.Writer) { printSnapshots(w, []events.SnapshotInfo{info}) })
			return nil
		},
	}
	cmd.Flags().Uint32Var(&cut, "cut", 0, "cut as Unix seconds (default: the service's clock less its settle time)")
	return cmd
}

func newSnapshotList(g *globals, authority *string) *cobra.Command {
	var committed bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the authority's snapshots, newest cut first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := openSnapshotAPI(cmd, g, *authority)
			if err != nil {
				return err
			}
			defer c.Close()
			var reply events.SnapshotListReply
			if _, err := c.call(cmd.Context(), events.SnapshotProto, events.SnapshotOpList, events.SnapshotListRequest{Collection: "*", CommittedOnly: committed}, &reply); err != nil {
				return err
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(reply, func(w io.Writer) { printSnapshots(w, reply.Snapshots) })
			return nil
		},
	}
	cmd.Flags().BoolVar(&committed, "committed", false, "only committed snapshots")
	return cmd
}

func newSnapshotPrune(g *globals, authority *string) *cobra.Command {
	return &cobra.Command{
		Use:   "prune",
		Short: "Drop the authority's journal history that its latest committed snapshot covers",
		Long: `Drop the authority's journal history that its latest committed snapshot covers.

The snapshot service verifies the snapshot and checks that the journal before
its cut is what the snapshot covers; the guard keeps the facts the documents
need and removes the others. Documents do not change. Peers that need the
removed history get the snapshot instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := openSnapshotAPI(cmd, g, *authority)
			if err != nil {
				return err
			}
			defer c.Close()
			var reply events.SnapshotPruned
			if _, err := c.call(cmd.Context(), events.SnapshotProto, events.SnapshotOpPrune, events.SnapshotPruneRequest{Collection: "*"}, &reply); err != nil {
				return err
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(reply, func(w io.Writer) {
				if reply.Facts == 0 {
					fmt.Fprintf(w, "nothing to prune before %s (snapshot %s)\n", time.Unix(int64(reply.CutSeconds), 0).UTC().Format(time.RFC3339), shortSnapshot(reply.Snapshot))
					return
				}
				fmt.Fprintf(w, "pruned %d facts (%d journal messages) before %s, snapshot %s; %d kept facts written again\n",
					reply.Facts, reply.Messages, time.Unix(int64(reply.CutSeconds), 0).UTC().Format(time.RFC3339), shortSnapshot(reply.Snapshot), reply.Republished)
			})
			return nil
		},
	}
}

func printSnapshots(w io.Writer, list []events.SnapshotInfo) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no snapshots")
		return
	}
	fmt.Fprintf(w, "%-16s  %-20s  %9s  %9s  %10s  %-9s  %s\n", "ID", "CUT", "FACTS", "OF", "BYTES", "STATE", "APPROVALS")
	for _, s := range list {
		state := "proposed"
		if s.Committed {
			state = "committed"
		}
		fmt.Fprintf(w, "%-16s  %-20s  %9d  %9d  %10d  %-9s  %d/%d\n", s.ID[:16], time.Unix(int64(s.CutSeconds), 0).UTC().Format(time.RFC3339),
			s.Facts, s.Count, s.ContentSize, state, len(s.Signatures), s.Threshold)
	}
}

// restoreWait bounds how long `snapshot restore` waits without progress.
const restoreWait = 2 * time.Minute

func newSnapshotRestore(g *globals, authority *string) *cobra.Command {
	var from string
	cmd := &cobra.Command{
		Use:   "restore --from PEER",
		Short: "Bootstrap this peer's copy of the authority from PEER's latest committed snapshot",
		Long: `Bootstrap this peer's copy of the authority from PEER's latest committed snapshot.

The local snapshot service fetches it through PEER's guard, verifies it (hash,
threshold of approvals, every fact, the documents) and loads its facts into
the local INGRESS, where the local guard checks them again. Anti-entropy then
reconciles only what came after the cut. An interrupted restore resumes where
it stopped when run again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := events.PeerID(from).Validate(); err != nil {
				return usageErrorf("--from: %v", err)
			}
			c, err := openSnapshotAPI(cmd, g, *authority)
			if err != nil {
				return err
			}
			defer c.Close()
			inbox := nats.NewInbox()
			updates := make(chan *nats.Msg, 64)
			sub, err := c.nc.ChanSubscribe(inbox, updates)
			if err != nil {
				return events.Wrap(events.ReasonUnavailable, err, "subscribe to restore progress")
			}
			defer sub.Unsubscribe()
			req := events.SnapshotRestoreRequest{Collection: "*", From: events.PeerID(from), ProgressInbox: inbox}
			if _, err := c.call(cmd.Context(), events.SnapshotProto, events.SnapshotOpRestore, req, nil); err != nil {
				return err
			}
			p := g.out(cmd.OutOrStdout(), cmd.ErrOrStderr())
			for {
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(restoreWait):
					return events.Errorf(events.ReasonUnavailable, "no restore progress for %s; the restore goes on in the service: run this again to follow it", restoreWait)
				case m := <-updates:
					pr, err := events.DecodeSnapshotProgress(m.Data)
					if err != nil {
						continue
					}
					if !p.json {
						fmt.Fprint(cmd.ErrOrStderr(), progressBar(pr))
					}
					switch pr.Phase {
					case events.SnapshotPhaseFailed:
						if !p.json {
							fmt.Fprintln(cmd.ErrOrStderr())
						}
						return events.Errorf(pr.Reason, "restore failed: %s", pr.Detail)
					case events.SnapshotPhaseComplete:
						p.result(pr, func(w io.Writer) {
							fmt.Fprintf(w, "\nrestored snapshot %s: %d facts loaded and accepted\n", shortSnapshot(pr.Snapshot), pr.Total)
						})
						return nil
					}
				}
			}
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "peer id to restore from (required)")
	_ = cmd.MarkFlagRequired("from")
	return cmd
}

// progressBar renders one progress report as a carriage-return line.
func progressBar(p events.SnapshotProgress) string {
	const width = 30
	filled := 0
	if p.Total > 0 {
		filled = int(int64(width) * min(p.Done, p.Total) / p.Total)
	}
	return fmt.Sprintf("\r%-9s [%s%s] %d/%d", p.Phase, strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.Done, p.Total)
}

func shortSnapshot(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

func newBenchBootstrap(g *globals) *cobra.Command {
	var cfg bench.Config
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "A new peer converging from a snapshot against one replaying every fact through anti-entropy, in one run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := bench.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			printBench(g, cmd, res)
			return nil
		},
	}
	cmd.Flags().IntVar(&cfg.Facts, "facts", 20000, "facts in the authority's history")
	cmd.Flags().IntVar(&cfg.HistoryPerLive, "history-per-live", 10, "history over live state (writes per document)")
	cmd.Flags().Float64Var(&cfg.AfterCut, "after-cut", 0.01, "share of the history written after the cut")
	cmd.Flags().StringVar(&cfg.StoreDir, "dir", "", "directory for the peers' stores (default a temporary one)")
	cmd.Flags().StringVar(&cfg.LeafCompression, "leaf-compression", "off", "s2 compression of the mesh links (off, s2_fast, s2_best, auto: nats-server's s2_auto)")
	cmd.Flags().StringVar(&cfg.ProfileDir, "cpuprofile-dir", "", "write a CPU profile of each timed span here (snapshot.pprof, replay.pprof)")
	return cmd
}
