package ota

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// requestTimeout bounds the work of one request.
const requestTimeout = 15 * time.Second

// maxFetchChunk bounds one fetch reply, well under NATS's max payload.
const maxFetchChunk = 1 << 20

// serve answers one request on fs.svc.ota.<op>.<authority>. The guard has
// checked the caller's token for the op's right (events.OTARights); the
// ledger checks everything the protocol requires.
func (s *Service) serve(ctx context.Context, m *nats.Msg) {
	ctx, cancel := context.WithTimeout(bus.ExtractTrace(ctx, m.Header), requestTimeout)
	defer cancel()
	addr, err := events.ParseAPISubject(events.ServicePrefix, m.Subject)
	var reply any
	if err == nil {
		if s.env.Tracer != nil {
			spanCtx, span := s.env.Tracer.Start(ctx, "ota."+addr.Op)
			ctx = spanCtx
			defer span.End()
		}
		reply, err = s.handle(ctx, addr.Op, m)
	}
	if err := bus.Respond(m, reply, err); err != nil {
		s.env.Log.Warn("ota: reply", "subject", m.Subject, "err", err)
	}
}

// decode reads a JSON request body, refusing unknown fields so that a
// misspelt field is an error rather than a silent default.
func decode(m *nats.Msg, v any) error {
	dec := json.NewDecoder(bytes.NewReader(m.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return events.Wrap(events.ReasonMalformed, err, "request body does not decode")
	}
	return nil
}

func (s *Service) handle(ctx context.Context, op string, m *nats.Msg) (any, error) {
	now := s.env.Clock.Now()
	if s.follower() && writes[op] {
		return s.relay(ctx, op, m)
	}
	switch op {
	case events.OTAOpPropose:
		var req events.OTAProposeRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		return s.propose(ctx, req, events.DeviceID(m.Header.Get(events.HeaderDevice)), now)
	case events.OTAOpApprove:
		var req events.OTAApproveRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		return s.commitReply(ctx, events.OTAEvent{Kind: events.OTAEventApproved, At: now, Proposal: req.Approval.Proposal, Approval: &req.Approval})
	case events.OTAOpReady:
		var req events.OTAReadyRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		return s.commitReply(ctx, events.OTAEvent{Kind: events.OTAEventReadiness, At: now, Proposal: req.Readiness.Proposal, Readiness: &req.Readiness})
	case events.OTAOpAbort:
		var req events.OTAAbortRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		detail := req.Detail
		if detail == "" {
			detail = "aborted by an operator"
		}
		return s.commitReply(ctx, events.OTAEvent{Kind: events.OTAEventAborted, At: now, Proposal: req.Proposal, AbortReason: events.OTAAbortManual, Detail: detail})
	case events.OTAOpPolicy:
		var req events.OTAPolicyRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		l, err := s.commit(ctx, events.OTAEvent{Kind: events.OTAEventPolicy, At: now, Root: &req.Root})
		if err != nil {
			return nil, err
		}
		return statusReply(l), nil
	case events.OTAOpStatus:
		var req events.OTAStatusRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		s.mu.Lock()
		err := s.catchUpLocked(ctx)
		l := s.ledger
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if req.Proposal == "" {
			return statusReply(l, slices.Sorted(maps.Keys(l.Ceremonies))...), nil
		}
		if _, ok := l.Ceremonies[req.Proposal]; !ok {
			return nil, events.Errorf(events.ReasonNotFound, "no proposal %q", req.Proposal)
		}
		return statusReply(l, req.Proposal), nil
	case events.OTAOpFetch:
		var req events.OTAFetchRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		return s.fetch(ctx, req)
	case events.OTAOpLog:
		var req events.OTALogRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		return s.readLog(ctx, req)
	case events.OTAOpHead:
		var req events.OTAHeadRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		s.wake()
		return events.OTAHeadReply{}, nil
	}
	return nil, events.Errorf(events.ReasonNotFound, "the ota service has no operation %q", op)
}

// statusReply reports the policy, the version in force and the named
// ceremonies.
func statusReply(l Ledger, ids ...string) events.OTAStatusReply {
	out := events.OTAStatusReply{Root: l.Policy.Signed, Active: l.Active, Ceremonies: []events.OTACeremony{}}
	for _, id := range ids {
		out.Ceremonies = append(out.Ceremonies, l.Ceremonies[id])
	}
	return out
}

func (s *Service) commitReply(ctx context.Context, ev events.OTAEvent) (events.OTAStatusReply, error) {
	l, err := s.commit(ctx, ev)
	if err != nil {
		return events.OTAStatusReply{}, err
	}
	return statusReply(l, ev.Proposal), nil
}

// propose records a proposal after storing its artifact. The artifact goes
// in first, so that a recorded proposal always has its artifact; a
// proposal refused after the upload leaves an orphan object, which a
// later upload of the same id overwrites.
func (s *Service) propose(ctx context.Context, req events.OTAProposeRequest, proposer events.DeviceID, now time.Time) (events.OTAStatusReply, error) {
	prop := req.Proposal
	if len(req.Artifact) > events.MaxOTAArtifact {
		return events.OTAStatusReply{}, events.Errorf(events.ReasonTooLarge, "artifact is %d bytes; the limit is %d", len(req.Artifact), events.MaxOTAArtifact)
	}
	sum := sha256.Sum256(req.Artifact)
	if int64(len(req.Artifact)) != prop.Artifact.Size || hex.EncodeToString(sum[:]) != prop.Artifact.SHA256 {
		return events.OTAStatusReply{}, events.Errorf(events.ReasonBadProof, "the uploaded artifact (%d bytes, sha256 %x) is not the one the proposal names (%d bytes, sha256 %s)",
			len(req.Artifact), sum, prop.Artifact.Size, prop.Artifact.SHA256)
	}
	if prop.PolicyVersion == 0 && prop.PolicyDigest == "" {
		policy := s.Ledger().Policy
		prop.PolicyVersion, prop.PolicyDigest = policy.Version, policy.DigestHex()
	}
	b := EncodeProposal(prop)
	ev := events.OTAEvent{Kind: events.OTAEventProposed, At: now, Proposal: ProposalID(b), ProposalBytes: b, Proposer: proposer}
	if _, err := s.Ledger().Apply(ev); err != nil {
		return events.OTAStatusReply{}, err // refuse before storing anything
	}
	if _, err := s.objects.PutBytes(ctx, ev.Proposal, req.Artifact); err != nil {
		return events.OTAStatusReply{}, events.Wrap(events.ReasonUnavailable, err, "store the artifact")
	}
	return s.commitReply(ctx, ev)
}

func (s *Service) fetch(ctx context.Context, req events.OTAFetchRequest) (events.OTAFetchReply, error) {
	if _, ok := s.Ledger().Ceremonies[req.Proposal]; !ok {
		return events.OTAFetchReply{}, events.Errorf(events.ReasonNotFound, "no proposal %q", req.Proposal)
	}
	data, err := s.artifact(ctx, req.Proposal)
	if err != nil {
		return events.OTAFetchReply{}, err
	}
	size := int64(len(data))
	if req.Offset < 0 || req.Offset > size {
		return events.OTAFetchReply{}, events.Errorf(events.ReasonMalformed, "offset %d is outside the artifact's %d bytes", req.Offset, size)
	}
	limit := req.Limit
	if limit <= 0 || limit > maxFetchChunk {
		limit = maxFetchChunk
	}
	end := min(req.Offset+limit, size)
	return events.OTAFetchReply{Data: data[req.Offset:end], Size: size}, nil
}

// artifact reads a proposal's artifact from the object store; a follower
// that has no copy yet fetches one from the coordinator.
func (s *Service) artifact(ctx context.Context, id string) ([]byte, error) {
	data, err := s.objects.GetBytes(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		if s.follower() {
			return s.copyArtifact(ctx, id)
		}
		return nil, events.Errorf(events.ReasonNotFound, "no artifact for proposal %q", id)
	}
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "read the artifact")
	}
	return data, nil
}
