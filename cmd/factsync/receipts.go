package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/receipts"
	"github.com/factsync/factsync/shared/keys"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newReceiptCommand, newCheckpointCommand) }

func newReceiptCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "receipt",
		Short: "Fetch and verify proofs that a peer accepted a fact",
	}
	cmd.AddCommand(newReceiptGet(g), newReceiptVerify(g))
	return cmd
}

// receiptWait bounds how long `receipt get` waits for a checkpoint to
// cover a fact accepted a moment ago.
const receiptWait = 5 * time.Second

func newReceiptGet(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:     "get FACT_ID",
		Short:   "Fetch the receipt of an accepted fact (prints it, or writes it with --out)",
		Example: "  factsync receipt get 3f9a… --out receipt.json\n  factsync receipt verify receipt.json --peer-key <hex>",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := events.ParseFactID(args[0]); err != nil {
				return err
			}
			c, _, err := openAPI(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer c.Close()
			raw, err := fetchReceipt(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			if out != "" {
				if err := os.WriteFile(out, raw, 0o644); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "receipt written to %s\n", out)
				return nil
			}
			_, err = cmd.OutOrStdout().Write(append(raw, '\n'))
			return err
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write the receipt to this file")
	return cmd
}

// fetchReceipt asks for a receipt, retrying while no signed checkpoint
// covers the fact yet (the service signs one at least every second).
func fetchReceipt(ctx context.Context, c *apiClient, factID string) ([]byte, error) {
	deadline := time.Now().Add(receiptWait)
	for {
		raw, err := c.call(ctx, "receipts", receipts.OpGet, receipts.GetRequest{FactID: factID}, nil)
		if !events.IsReason(err, events.ReasonUnavailable) || time.Now().After(deadline) {
			return raw, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func newReceiptVerify(g *globals) *cobra.Command {
	var peerKey string
	cmd := &cobra.Command{
		Use:   "verify RECEIPT_FILE... --peer-key KEY",
		Short: "Verify receipts offline against the peer's public key (no server needed)",
		Long: "Verify receipts offline against the peer's public key (no server needed).\n\n" +
			"Receipts fetched together mostly share the peer's latest checkpoint; its signature is verified once for all of them.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pub, err := readPublicKey(peerKey, keys.Peer)
			if err != nil {
				return err
			}
			v, err := receipts.NewVerifier(pub)
			if err != nil {
				return err
			}
			for _, file := range args {
				raw, err := os.ReadFile(file)
				if err != nil {
					return usageErrorf("receipt file: %v", err)
				}
				if err := v.VerifyReceipt(raw); err != nil {
					if len(args) == 1 {
						return err
					}
					return events.Errorf(events.ReasonOf(err), "%s: %s", file, detailOf(err))
				}
			}
			res := map[string]any{"valid": true, "peer": events.PeerIDOf(pub), "receipts": len(args)}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(res, func(w io.Writer) {
				if len(args) == 1 {
					fmt.Fprintf(w, "receipt verified: peer %s accepted the fact and logged it\n", res["peer"])
					return
				}
				fmt.Fprintf(w, "%d receipts verified: peer %s accepted each fact and logged it\n", len(args), res["peer"])
			})
			return nil
		},
	}
	cmd.Flags().StringVar(&peerKey, "peer-key", "", "the peer's public key: a key file or 64 hex characters (required)")
	_ = cmd.MarkFlagRequired("peer-key")
	return cmd
}

func newCheckpointCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "checkpoint", Short: "Signed checkpoints of a peer's receipts log"}
	var from, to, peerKey string
	verify := &cobra.Command{
		Use:   "verify --from OLD --to NEW --peer-key KEY",
		Short: "Check that checkpoint NEW extends checkpoint OLD (fetches the consistency proof)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pub, err := readPublicKey(peerKey, keys.Peer)
			if err != nil {
				return err
			}
			older, newer, err := readCheckpoints(from, to, pub)
			if err != nil {
				return err
			}
			c, _, err := openAPI(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer c.Close()
			o, _ := receipts.OpenCheckpoint(older, pub)
			n, _ := receipts.OpenCheckpoint(newer, pub)
			var reply receipts.ConsistencyReply
			if _, err := c.call(cmd.Context(), "receipts", receipts.OpConsistency, receipts.ConsistencyRequest{OldSize: o.Size, NewSize: n.Size}, &reply); err != nil {
				return err
			}
			if err := receipts.VerifyConsistency(older, newer, reply.Proof, pub); err != nil {
				return err
			}
			res := map[string]any{"consistent": true, "old_size": o.Size, "new_size": n.Size}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(res, func(w io.Writer) {
				fmt.Fprintf(w, "consistent: the log of %d entries extends the log of %d\n", n.Size, o.Size)
			})
			return nil
		},
	}
	verify.Flags().StringVar(&from, "from", "", "the older signed checkpoint file (required)")
	verify.Flags().StringVar(&to, "to", "", "the newer signed checkpoint file (required)")
	verify.Flags().StringVar(&peerKey, "peer-key", "", "the peer's public key: a key file or 64 hex characters (required)")
	for _, f := range []string{"from", "to", "peer-key"} {
		_ = verify.MarkFlagRequired(f)
	}
	cmd.AddCommand(verify)
	return cmd
}

// readCheckpoints reads and opens both checkpoints, so a bad file is named
// before any request.
func readCheckpoints(from, to string, pub ed25519.PublicKey) (older, newer []byte, err error) {
	for _, p := range []struct {
		path string
		dst  *[]byte
	}{{from, &older}, {to, &newer}} {
		b, err := os.ReadFile(p.path)
		if err != nil {
			return nil, nil, usageErrorf("checkpoint file: %v", err)
		}
		if _, err := receipts.OpenCheckpoint(b, pub); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p.path, err)
		}
		*p.dst = b
	}
	return older, newer, nil
}
