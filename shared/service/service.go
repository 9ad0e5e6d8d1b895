// Package service is the small contract every factsync service implements,
// so that `factsync serve` can run any set of them in one process (against
// an embedded server) or one alone against an external NATS, as Loki and
// Mimir do with -target.
package service

import (
	"context"
	"crypto/ed25519"
	"log/slog"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Service is one protocol of factsync.
type Service interface {
	// Name is the service's name: the `factsync serve` argument, the
	// durable consumer name prefix, and the tracer and meter name.
	Name() string
	// Streams lists the JetStream streams the service owns. The runner
	// provisions them idempotently before Run.
	Streams() []jetstream.StreamConfig
	// Run serves until ctx is cancelled, then drains in-flight work and
	// returns nil. It calls env.Ready once it is ready to serve. An error
	// return means the service could not run at all.
	Run(ctx context.Context, env *Env) error
}

// Env is what the runner hands a service: connections, identity and
// plumbing. Services take time only from Clock.
type Env struct {
	Conn  *nats.Conn
	JS    jetstream.JetStream
	Log   *slog.Logger
	Clock clock.Clock

	Tracer trace.Tracer
	Meter  metric.Meter

	// Peer is this site's identity; PeerKey signs what the peer vouches
	// for (checkpoints, approvals, snapshot manifests).
	Peer    events.PeerID
	PeerKey ed25519.PrivateKey

	// DataDir is a directory the service may keep local state in
	// (checkpoints, indexes). It is private to the service.
	DataDir string

	// Ready marks the service ready; /readyz reports it.
	Ready func()
	// Remark, when set, records a sentence /readyz shows beside the
	// service's state: how a ready service is limited (the ota service
	// of a peer with no release policy refuses every request).
	Remark func(detail string)
}
