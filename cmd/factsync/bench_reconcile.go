package main

import (
	"strconv"
	"strings"

	"github.com/factsync/factsync/services/antientropy/bench"
	"github.com/spf13/cobra"
)

func init() { benchCommands = append(benchCommands, newBenchReconcile) }

func newBenchReconcile(g *globals) *cobra.Command {
	var opts bench.Options
	var ds string
	cmd := &cobra.Command{
		Use:     "reconcile",
		Short:   "Reconciliation bytes, round trips and CPU for negentropy and RIBLT, beside the lower bound and a naive exchange",
		Example: "  factsync bench reconcile --n 1000000 --d 1,100,10000 --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, f := range strings.Split(ds, ",") {
				d, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || d < 0 {
					return usageErrorf("--d %q: want comma-separated non-negative counts", ds)
				}
				opts.Ds = append(opts.Ds, d)
			}
			rep, err := bench.Reconcile(cmd.Context(), opts)
			if err != nil {
				return err
			}
			printBench(g, cmd, rep)
			return nil
		},
	}
	cmd.Flags().IntVar(&opts.N, "n", 1_000_000, "facts both peers hold")
	cmd.Flags().StringVar(&ds, "d", "1,100,10000", "differences to measure, comma-separated")
	cmd.Flags().Uint64Var(&opts.Seed, "seed", 1, "seed of the ids and timestamps")
	return cmd
}
