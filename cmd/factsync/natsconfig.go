package main

import (
	"fmt"
	"io"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newNATSConfigCommand) }

// natsConfigReport is the JSON form of `factsync nats-config`.
type natsConfigReport struct {
	Peers  []events.PeerID `json:"peers"`
	Config string          `json:"config"`
}

func newNATSConfigCommand(g *globals) *cobra.Command {
	var peers []string
	cmd := &cobra.Command{
		Use:   "nats-config",
		Short: "Print the NATS users and permissions of a deployed peer (deploy/k8s/base/nats/permissions.conf)",
		Long: `Print the authorization block of a deployed peer's nats-server, rendered
from shared/natsauth, the model the embedded servers use: the users client,
guard, services and ops, and one user per remote peer (--peer), peer-<id>,
which may receive only the requests addressed to it and the replies on its
own inbox, and announce presence only as itself. Passwords are config
variables ($CLIENT_PASSWORD, $PEER_<ID>_PASSWORD, ...) that nats-server
reads from its environment. See docs/operations.md, "NATS users and
permissions".`,
		Example: `  factsync nats-config > deploy/k8s/base/nats/permissions.conf
  factsync nats-config --peer <id> --peer <id> > overlay/permissions.conf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ids := make([]events.PeerID, len(peers))
			for i, p := range peers {
				ids[i] = events.PeerID(p)
			}
			config, err := natsauth.DeployedConfig(ids...)
			if err != nil {
				return usageErrorf("--peer: %v", err)
			}
			g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(natsConfigReport{Peers: ids, Config: config}, func(w io.Writer) {
				fmt.Fprint(w, config)
			})
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&peers, "peer", nil, "a remote peer's id (26 lowercase base32 characters); repeat or separate with commas")
	return cmd
}
