package main

import (
	"os"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/receipts"
	"github.com/factsync/factsync/shared/service"
)

// The writer lease, like the journal's partition settings, comes from the
// environment: every replica of a deployment must agree on it.
func init() {
	registerService(receipts.Name, func(o *serveOptions) (service.Service, error) {
		ttl, err := envLease("FACTSYNC_RECEIPTS_LEASE")
		if err != nil {
			return nil, err
		}
		wait, err := envLease("FACTSYNC_RECEIPTS_CHECKPOINT_WAIT")
		if err != nil {
			return nil, err
		}
		return receipts.New(receipts.Config{Lease: ttl, CheckpointWait: wait}), nil
	})
}

// envLease reads a duration (a lease, or the receipts' checkpoint wait)
// from the environment variable name; 0 (the service's default) when it
// is unset.
func envLease(name string) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, events.Errorf(events.ReasonMalformed, "%s=%q is not a positive duration such as 10s", name, v)
	}
	return d, nil
}
