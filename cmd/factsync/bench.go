package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/receipts"
	"github.com/spf13/cobra"
)

// benchJSON is `factsync bench --json`, the same as -o json.
var benchJSON bool

func init() { commands = append(commands, newBenchCommand) }

// benchCommands are the subcommands of `factsync bench`; each benchmark's
// file appends its own.
var benchCommands []func(*globals) *cobra.Command

func newBenchCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure factsync on this machine (each benchmark prints its baseline beside it)",
	}
	cmd.PersistentFlags().BoolVar(&benchJSON, "json", false, "print the result as JSON (same as -o json)")
	for _, add := range append([]func(*globals) *cobra.Command{newBenchGuard, newBenchReceipts}, benchCommands...) {
		cmd.AddCommand(add(g))
	}
	return cmd
}

// printBench prints a benchmark result as JSON, or as indented key/value
// text.
func printBench(g *globals, cmd *cobra.Command, res any) {
	p := g.out(cmd.OutOrStdout(), cmd.ErrOrStderr())
	p.json = p.json || benchJSON
	p.result(res, func(w io.Writer) {
		b, _ := json.MarshalIndent(res, "", "  ")
		fmt.Fprintln(w, string(b))
	})
}

func newBenchGuard(g *globals) *cobra.Command {
	var cfg guard.BenchConfig
	cmd := &cobra.Command{
		Use:   "guard",
		Short: "Guard decisions per second and latency, beside the raw ed25519 verify rate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Bus && cfg.StoreDir == "" {
				dir, cleanup, err := tempDir("factsync-bench-guard-")
				if err != nil {
					return err
				}
				defer cleanup()
				cfg.StoreDir = dir
			}
			res, err := guard.Bench(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			printBench(g, cmd, res)
			return nil
		},
	}
	cmd.Flags().IntVar(&cfg.Facts, "facts", 20000, "facts to decide")
	cmd.Flags().IntVar(&cfg.BatchSize, "batch", 100, "facts per INGRESS message")
	cmd.Flags().BoolVar(&cfg.Bus, "bus", false, "run a whole guard against an embedded JetStream (fsync before ack) instead of the checker alone")
	return cmd
}

func newBenchReceipts(g *globals) *cobra.Command {
	var cfg receipts.BenchConfig
	cmd := &cobra.Command{
		Use:   "receipts",
		Short: "Receipts log appends per second, proof size and offline verify time",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := receipts.Bench(cfg)
			if err != nil {
				return err
			}
			printBench(g, cmd, res)
			return nil
		},
	}
	cmd.Flags().IntVar(&cfg.Entries, "entries", 100000, "facts to append")
	cmd.Flags().IntVar(&cfg.Batch, "batch", 512, "facts per append (one fsync)")
	cmd.Flags().IntVar(&cfg.Verifies, "verifies", 2000, "receipts to verify")
	cmd.Flags().StringVar(&cfg.Dir, "dir", "", "directory for the log (default a temporary one): put it on the disk the service uses")
	return cmd
}
