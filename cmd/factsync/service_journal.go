package main

import (
	"os"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/service"
)

// The journal's scaling settings come from the environment, like the
// guard's policy directory: every replica of a deployment must agree on
// them, so they belong with the deployment rather than on a command line.
func init() {
	registerService(journal.Name, func(o *serveOptions) (service.Service, error) {
		cfg := journal.Config{Partitions: envIntOr("FACTSYNC_JOURNAL_PARTITIONS", 0)}
		if v := os.Getenv("FACTSYNC_JOURNAL_LEASE"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return nil, events.Errorf(events.ReasonMalformed, "FACTSYNC_JOURNAL_LEASE=%q is not a positive duration such as 10s", v)
			}
			cfg.LeaseTTL = d
		}
		return journal.New(cfg), nil
	})
}
