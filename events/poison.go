package events

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The poison queue. A consumer that keeps failing on a message after its
// retries moves it to fs.poison.<service>, with the error and the original
// subject in headers, and acks the original so one bad message cannot stall
// a stream. Operators inspect and replay from the POISON stream.
const (
	PoisonPrefix = "fs.poison"
	StreamPoison = "POISON"
)

// PoisonSubject is where service's poisoned messages go. service must be a
// valid name (see CheckName); the bus checks it when a router is built.
func PoisonSubject(service string) string { return join(PoisonPrefix, service) }

// PoisonStream keeps poisoned messages for two weeks. Every service that
// consumes through the bus provisions it; the config is the same for all,
// so provisioning is idempotent.
func PoisonStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamPoison,
		Description: "messages a consumer failed on after its retries, by service",
		Subjects:    []string{PoisonPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      14 * 24 * time.Hour,
		MaxBytes:    256 << 20,
		Discard:     jetstream.DiscardOld,
		Duplicates:  2 * time.Minute,
	}
}
