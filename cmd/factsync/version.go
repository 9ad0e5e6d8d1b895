package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/factsync/factsync/events"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// ProtocolVersion is the sync protocol version this build speaks.
const protocolVersion = 1

func init() {
	commands = append(commands, func(g *globals) *cobra.Command {
		return &cobra.Command{
			Use:   "version",
			Short: "Print the version of factsync and of the protocols it speaks",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				info := versionInfo()
				g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(info, func(w io.Writer) {
					fmt.Fprintf(w, "factsync %s (commit %s, %s)\nprotocol %d, fact schema %d\n",
						info.Version, info.Commit, info.Go, info.Protocol, info.FactSchema)
				})
				return nil
			},
		}
	})
}

type versionReport struct {
	Version    string `json:"version"`
	Commit     string `json:"commit"`
	Go         string `json:"go"`
	Protocol   int    `json:"protocol"`
	FactSchema int    `json:"fact_schema"`
}

func versionInfo() versionReport {
	r := versionReport{Version: version, Commit: "unknown", Go: runtime.Version(), Protocol: protocolVersion, FactSchema: events.FactSchemaVersion}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				r.Commit = s.Value
			}
		}
	}
	return r
}
