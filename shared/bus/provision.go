package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go/jetstream"
)

// Provision creates each stream, or updates it to the given config when it
// exists. It is idempotent, so every service calls it at start-up for the
// streams it owns. When a stream exists with a config the server cannot
// update in place (retention, storage, a subject owned by another
// stream...), the error names the stream, what differs and the server's
// reason, with reason code ReasonConflict.
func Provision(ctx context.Context, js jetstream.JetStream, configs ...jetstream.StreamConfig) error {
	for _, cfg := range configs {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return provisionError(ctx, js, cfg, err)
		}
	}
	return nil
}

func provisionError(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, err error) error {
	if ctx.Err() != nil || errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("provision stream %s", want.Name))
	}
	existing, infoErr := js.Stream(ctx, want.Name)
	if infoErr != nil {
		return events.Wrap(events.ReasonConflict, err, fmt.Sprintf("cannot create stream %s", want.Name))
	}
	diff := streamDiff(existing.CachedInfo().Config, want)
	if diff == "" {
		diff = "settings the server will not change in place"
	}
	return events.Wrap(events.ReasonConflict, err, fmt.Sprintf(
		"stream %s exists with a config incompatible with this version (%s); migrate or delete it", want.Name, diff))
}

// streamDiff names the settings in which have differs from want, for an
// operator reading the error.
func streamDiff(have, want jetstream.StreamConfig) string {
	var out []string
	add := func(field string, h, w any) { out = append(out, fmt.Sprintf("%s is %v, want %v", field, h, w)) }
	if have.Retention != want.Retention {
		add("retention", have.Retention, want.Retention)
	}
	if have.Storage != want.Storage {
		add("storage", have.Storage, want.Storage)
	}
	if !slices.Equal(have.Subjects, want.Subjects) {
		add("subjects", have.Subjects, want.Subjects)
	}
	if want.Replicas > 0 && have.Replicas != want.Replicas {
		add("replicas", have.Replicas, want.Replicas)
	}
	if have.Discard != want.Discard {
		add("discard", have.Discard, want.Discard)
	}
	if have.AllowAtomicPublish != want.AllowAtomicPublish {
		add("allow_atomic", have.AllowAtomicPublish, want.AllowAtomicPublish)
	}
	if have.DenyDelete != want.DenyDelete {
		add("deny_delete", have.DenyDelete, want.DenyDelete)
	}
	if len(out) == 0 {
		return ""
	}
	return fmt.Sprint(out)
}

// ProvisionKV creates or updates key-value buckets, like Provision does
// streams.
func ProvisionKV(ctx context.Context, js jetstream.JetStream, configs ...jetstream.KeyValueConfig) ([]jetstream.KeyValue, error) {
	out := make([]jetstream.KeyValue, 0, len(configs))
	for _, cfg := range configs {
		kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
		if err != nil {
			return nil, events.Wrap(events.ReasonConflict, err, fmt.Sprintf("provision key-value bucket %s", cfg.Bucket))
		}
		out = append(out, kv)
	}
	return out, nil
}

// ProvisionObjectStore creates or updates object stores, like Provision
// does streams.
func ProvisionObjectStore(ctx context.Context, js jetstream.JetStream, configs ...jetstream.ObjectStoreConfig) ([]jetstream.ObjectStore, error) {
	out := make([]jetstream.ObjectStore, 0, len(configs))
	for _, cfg := range configs {
		os, err := js.CreateOrUpdateObjectStore(ctx, cfg)
		if err != nil {
			return nil, events.Wrap(events.ReasonConflict, err, fmt.Sprintf("provision object store %s", cfg.Bucket))
		}
		out = append(out, os)
	}
	return out, nil
}
