package guard

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/capability"
	"github.com/nats-io/nats.go/jetstream"
)

// revocationBucket is events.RevocationBucket. Every guard replica
// watches it, so a revocation accepted by one applies at all of them; with
// R3 JetStream it survives the loss of a server.
func revocationBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      events.RevocationBucket,
		Description: "revoked Biscuit revocation ids, by authority",
		Storage:     jetstream.FileStorage,
		History:     1,
	}
}

// watchRevocations provisions the bucket, loads every revocation into the
// verifier and keeps applying new ones until ctx ends. It returns once the
// existing revocations are loaded, so no revoked token passes after Ready.
func (s *Service) watchRevocations(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (jetstream.KeyValue, error) {
	kv, err := provisionKV(ctx, js, revocationBucket())
	if err != nil {
		return nil, err
	}
	err = followKV(ctx, kv, "revocations", func(entry jetstream.KeyValueEntry) {
		auth, id, ok := strings.Cut(entry.Key(), ".")
		if !ok {
			log.Warn("ignoring malformed revocation key", "key", entry.Key())
			return
		}
		s.verifier.Revoke(events.AuthorityID(auth), id)
	})
	if err != nil {
		return nil, err
	}
	return kv, nil
}

// RevokeReply is the body of a successful revoke reply.
type RevokeReply struct {
	Revoked int `json:"revoked"`
}

// revoke serves APISubject(GuardProto, OpRevoke, auth): an authority-signed
// capability.Revocation. The ids are stored in the bucket (for every
// replica) and applied here at once, so the revoker's next request already
// sees them.
func (g *running) revoke(ctx context.Context, auth events.AuthorityID, body []byte) ([]byte, error) {
	var r capability.Revocation
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "decode revocation")
	}
	if err := r.Verify(); err != nil {
		return nil, err
	}
	if r.Authority() != auth {
		return nil, events.Errorf(events.ReasonBadSignature, "revocation is signed by authority %s, not %s", r.Authority(), auth)
	}
	for _, id := range r.IDs {
		if _, err := g.revocations.Put(ctx, string(auth)+"."+id, body); err != nil {
			return nil, events.Wrap(events.ReasonUnavailable, err, "store revocation")
		}
	}
	g.verifier.Revoke(auth, r.IDs...)
	b, _ := json.Marshal(RevokeReply{Revoked: len(r.IDs)})
	return b, nil
}
