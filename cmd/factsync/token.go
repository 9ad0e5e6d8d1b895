package main

import (
	"crypto/ed25519"
	"encoding/base64"
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
	"github.com/spf13/cobra"
)

// Token files hold the token as base64url text, Biscuit's usual printable
// form, so a token can be pasted into a shell or an environment variable.
// readToken also takes standard base64 and the raw binary form.
func readToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, events.Wrap(events.ReasonBadToken, err, "read token file")
	}
	return decodeToken(b), nil
}

func decodeToken(b []byte) []byte {
	text := strings.TrimSpace(string(b))
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if raw, err := enc.DecodeString(text); err == nil && len(raw) > 0 {
			return raw
		}
	}
	return b
}

func encodeToken(token []byte) string { return base64.RawURLEncoding.EncodeToString(token) }

func writeToken(path string, token []byte) error {
	return os.WriteFile(path, []byte(encodeToken(token)+"\n"), 0o600)
}

// readPublicKey reads a device or authority public key given as a key
// file (public or private) or as 64 hex characters.
func readPublicKey(arg string, use keys.Use) (ed25519.PublicKey, error) {
	if b, err := hex.DecodeString(arg); err == nil && len(b) == ed25519.PublicKeySize {
		return b, nil
	}
	pub, err := keys.LoadPublic(arg, use)
	if err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, fmt.Sprintf("%q is neither a %s key file nor 64 hex characters", arg, use))
	}
	return pub, nil
}

func init() {
	commands = append(commands, newAuthorityCommand, newTokenCommand)
}

func newAuthorityCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "authority", Short: "Manage authority keys"}
	var out string
	newCmd := &cobra.Command{
		Use:   "new",
		Short: "Create an authority key pair; its public key names a new journal",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := keys.Generate()
			if err != nil {
				return err
			}
			if err := keys.Save(out, keys.Authority, key); err != nil {
				return err
			}
			pub := key.Public().(ed25519.PublicKey)
			res := map[string]string{"authority": string(events.AuthorityIDOf(pub)), "public_key": hex.EncodeToString(pub), "key_file": mustAbs(out)}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(res, func(w io.Writer) {
				fmt.Fprintf(w, "authority %s\npublic key %s\nprivate key written to %s (keep it secret)\n", res["authority"], res["public_key"], res["key_file"])
			})
			return nil
		},
	}
	newCmd.Flags().StringVar(&out, "out", "authority.key", "file to write the private key to (created 0600, never overwritten)")
	cmd.AddCommand(newCmd)
	return cmd
}

func newTokenCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Mint, attenuate, inspect and revoke Biscuit tokens"}
	cmd.AddCommand(newTokenMint(g), newTokenAttenuate(g), newTokenInspect(g), newTokenRevoke(g))
	return cmd
}

// tokenResult is the JSON form of a minted or attenuated token.
type tokenResult struct {
	Token         string   `json:"token"`
	Hash          string   `json:"hash"`
	RevocationIDs []string `json:"revocation_ids"`
	File          string   `json:"file,omitempty"`
}

func printToken(g *globals, cmd *cobra.Command, token []byte, out string) error {
	ids, err := capability.RevocationIDs(token)
	if err != nil {
		return err
	}
	res := tokenResult{Token: encodeToken(token), Hash: events.TokenHash(token), RevocationIDs: ids}
	if out != "" {
		if err := writeToken(out, token); err != nil {
			return err
		}
		res.File = mustAbs(out)
	}
	g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(res, func(w io.Writer) {
		if out != "" {
			fmt.Fprintf(w, "token written to %s\nhash %s\n", res.File, res.Hash)
			return
		}
		fmt.Fprintln(w, res.Token)
	})
	return nil
}

func newTokenMint(g *globals) *cobra.Command {
	var authKey, devicePub, out string
	var rights []string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "mint",
		Short: "Mint a device token rooted at an authority",
		Example: `  factsync token mint --authority-key authority.key --device-pub device.key \
    --right notes:write --right notes:read --ttl 24h --out device.token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			authority, err := keys.Load(authKey, keys.Authority)
			if err != nil {
				return events.Wrap(events.ReasonBadToken, err, "load authority key")
			}
			device, err := readPublicKey(devicePub, keys.Device)
			if err != nil {
				return err
			}
			parsed, err := capability.ParseRights(rights)
			if err != nil {
				return err
			}
			if len(parsed) == 0 {
				return usageErrorf("name at least one --right, e.g. --right notes:write")
			}
			if ttl <= 0 {
				return usageErrorf("--ttl must be positive")
			}
			token, err := capability.Mint(authority, device, parsed, time.Now().Add(ttl))
			if err != nil {
				return err
			}
			return printToken(g, cmd, token, out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&authKey, "authority-key", "", "authority private key file (required)")
	f.StringVar(&devicePub, "device-pub", "", "device public key: a key file or 64 hex characters (required)")
	f.StringArrayVar(&rights, "right", nil, "collection:op to grant (op: "+opsList()+"; collection * for all); repeatable")
	f.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid")
	f.StringVar(&out, "out", "", "write the token to this file (0600) instead of printing it")
	_ = cmd.MarkFlagRequired("authority-key")
	_ = cmd.MarkFlagRequired("device-pub")
	return cmd
}

func opsList() string {
	ops := make([]string, len(capability.Ops))
	for i, op := range capability.Ops {
		ops[i] = string(op)
	}
	return strings.Join(ops, ", ")
}

func newTokenAttenuate(g *globals) *cobra.Command {
	var rights []string
	var ttl time.Duration
	var out string
	cmd := &cobra.Command{
		Use:   "attenuate TOKEN_FILE",
		Short: "Narrow a token: keep only some rights, or end it sooner (no key needed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			token, err := readToken(args[0])
			if err != nil {
				return err
			}
			parsed, err := capability.ParseRights(rights)
			if err != nil {
				return err
			}
			var expiry time.Time
			if ttl > 0 {
				expiry = time.Now().Add(ttl)
			}
			narrowed, err := capability.Attenuate(token, parsed, expiry)
			if err != nil {
				return err
			}
			return printToken(g, cmd, narrowed, out)
		},
	}
	cmd.Flags().StringArrayVar(&rights, "right", nil, "collection:op to keep; repeatable")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "end validity this long from now")
	cmd.Flags().StringVar(&out, "out", "", "write the token to this file (0600) instead of printing it")
	return cmd
}

func newTokenInspect(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect TOKEN_FILE",
		Short: "Print a token's datalog blocks and revocation ids",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			token, err := readToken(args[0])
			if err != nil {
				return err
			}
			text, err := capability.Inspect(token)
			if err != nil {
				return err
			}
			ids, err := capability.RevocationIDs(token)
			if err != nil {
				return err
			}
			res := map[string]any{"hash": events.TokenHash(token), "blocks": text, "revocation_ids": ids}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(res, func(w io.Writer) {
				fmt.Fprintf(w, "hash %s\n\n%s\nrevocation ids:\n  %s\n", res["hash"], strings.TrimRight(text, "\n"), strings.Join(ids, "\n  "))
			})
			return nil
		},
	}
}

func newTokenRevoke(g *globals) *cobra.Command {
	var authKey string
	cmd := &cobra.Command{
		Use:   "revoke TOKEN_FILE",
		Short: "Revoke a token (and every token attenuated from it) on the running stack",
		Long: `Revoke a token. The authority signs the revocation; the guard stores it in
its replicated revocation set, and from then on refuses the token and every
token attenuated from it with reason token_revoked.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			token, err := readToken(args[0])
			if err != nil {
				return err
			}
			sc, err := readContext(g.contextFile)
			if err != nil {
				return err
			}
			if authKey == "" {
				authKey = sc.AuthorityKey
			}
			authority, err := keys.Load(authKey, keys.Authority)
			if err != nil {
				return events.Wrap(events.ReasonBadToken, err, "load authority key")
			}
			ids, err := capability.RevocationIDs(token)
			if err != nil {
				return err
			}
			// Revoking the first block's id revokes the token and all its
			// attenuations.
			rev, err := capability.SignRevocation(authority, ids[:1])
			if err != nil {
				return err
			}
			nc, err := connectClient(cmd.Context(), sc)
			if err != nil {
				return err
			}
			defer nc.Close()
			reply, err := request(cmd.Context(), nc, events.APISubject(events.GuardProto, events.OpRevoke, rev.Authority()), rev.Marshal(), nil)
			if err != nil {
				return err
			}
			res := map[string]any{"revoked": ids[:1], "reply": string(reply)}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(res, func(w io.Writer) {
				fmt.Fprintf(w, "revoked %s (token %s and its attenuations)\n", ids[0], filepath.Base(args[0]))
			})
			return nil
		},
	}
	cmd.Flags().StringVar(&authKey, "authority-key", "", "authority private key file (default: the context's)")
	return cmd
}
