package ota

import (
	"context"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Unconfigured is the ota service of a peer that has no release policy
// yet. It runs so that `factsync serve` starts every service and /readyz
// says what is missing, and it refuses every OTA request with
// ReasonNotConfigured and Hint, rather than leaving requests to time out
// unanswered. It writes nothing: without a trusted root it can judge no
// ceremony. The protocol gate (events.ProtocolGate) needs no ota service,
// so peers are still admitted by the version in force.
//
// Run every ota replica of a deployment configured, or none: an
// unconfigured replica beside configured ones would answer some of their
// requests with a refusal.
type Unconfigured struct {
	// Authority, when set, limits the refusals to requests for it;
	// otherwise requests for every authority are refused.
	Authority events.AuthorityID
	// Hint says how to configure a policy; it ends every refusal and the
	// /readyz remark.
	Hint string
}

var _ service.Service = Unconfigured{}

// Name is "ota".
func (Unconfigured) Name() string { return Name }

// Streams is none: the OTA stream is the configured service's to create.
func (Unconfigured) Streams() []jetstream.StreamConfig { return nil }

// Run refuses OTA requests until ctx ends.
func (u Unconfigured) Run(ctx context.Context, env *service.Env) error {
	auth := u.Authority
	if auth == "" {
		auth = "*"
	}
	refusal := u.refusal()
	sub, err := env.Conn.QueueSubscribe(events.ServiceSubject(Name, "*", auth), Name, func(m *nats.Msg) {
		_ = bus.Respond(m, nil, refusal)
	})
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "subscribe to OTA requests")
	}
	defer sub.Drain()
	if err := env.Conn.FlushTimeout(requestTimeout); err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "register OTA subscriptions")
	}
	if env.Log != nil {
		env.Log.Warn("ota: no release policy configured; refusing OTA requests", "reason", events.ReasonNotConfigured, "hint", u.Hint)
	}
	if env.Remark != nil {
		env.Remark(refusal.Detail)
	}
	if env.Ready != nil {
		env.Ready()
	}
	<-ctx.Done()
	return nil
}

func (u Unconfigured) refusal() *events.Error {
	detail := "this peer has no OTA release policy, so it takes part in no upgrade ceremony"
	if u.Hint != "" {
		detail += ": " + u.Hint
	}
	return events.Errorf(events.ReasonNotConfigured, "%s", detail)
}
