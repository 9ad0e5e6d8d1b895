package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/spf13/cobra"
)

// probe lets a container health check ask a factsync process whether it is
// ready: the runtime image is distroless, with no shell or curl.
func init() {
	commands = append(commands, func(g *globals) *cobra.Command {
		var timeout time.Duration
		cmd := &cobra.Command{
			Use:     "probe URL",
			Short:   "Exit 0 when URL answers 2xx (for container health checks)",
			Example: "  factsync probe http://127.0.0.1:8080/readyz",
			Args:    cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
				defer cancel()
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
				if err != nil {
					return usageErrorf("probe URL %q: %v", args[0], err)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return events.Wrap(events.ReasonUnavailable, err, "probe "+args[0])
				}
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					return events.Errorf(events.ReasonUnavailable, "probe %s: %s", args[0], resp.Status)
				}
				fmt.Fprintln(cmd.OutOrStdout(), resp.Status)
				return nil
			},
		}
		cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for an answer")
		return cmd
	})
}
