package main

import (
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/snapshot"
	"github.com/factsync/factsync/shared/service"
)

func init() {
	registerService(snapshot.Name, func(o *serveOptions) (service.Service, error) {
		cfg := snapshot.Config{Default: snapshot.Policy{Threshold: envIntOr("FACTSYNC_SNAPSHOT_THRESHOLD", snapshot.DefaultThreshold)}}
		for _, p := range strings.Split(envOr("FACTSYNC_SNAPSHOT_APPROVERS", ""), ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			if err := events.PeerID(p).Validate(); err != nil {
				return nil, usageErrorf("FACTSYNC_SNAPSHOT_APPROVERS: %v", err)
			}
			cfg.Approvers = append(cfg.Approvers, events.PeerID(p))
		}
		cfg.EveryFacts = envIntOr("FACTSYNC_SNAPSHOT_EVERY_FACTS", 0)
		lease, err := envLease("FACTSYNC_SNAPSHOT_LEASE")
		if err != nil {
			return nil, err
		}
		cfg.Lease = lease
		// FACTSYNC_SNAPSHOT_PRUNE=1 drops the JOURNAL history each newly
		// committed snapshot covers, for every authority.
		cfg.DefaultRetention.PruneJournal = envIntOr("FACTSYNC_SNAPSHOT_PRUNE", 0) == 1
		return snapshot.New(cfg), nil
	})
}
