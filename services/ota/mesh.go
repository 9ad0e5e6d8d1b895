package ota

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Across the mesh, one peer's OTA stream (the coordinator's) is the
// ceremony's log. A follower:
//
//   - copies that log into its own OTA stream, message for message at the
//     same sequence, folding each message with its own ledger, which
//     checks every signature, threshold and time itself: a follower
//     trusts the coordinator for the order of events, never for their
//     validity;
//   - sends its writes (proposals, approvals, readiness, aborts,
//     rotations) to the coordinator on fs.peer.<coordinator>.ota.<op>,
//     through the coordinator's guard, which checks the caller's token as
//     for its own clients, and whose ledger checks the signatures on
//     arrival, so a relaying peer cannot forge an approval or another
//     peer's readiness;
//   - fetches artifacts from the coordinator and keeps a checked copy.
//
// After each write the coordinator sends a head notice to the peers of the
// policy, so they copy at once; a follower also copies on every tick, which
// is how it catches up after a partition.

// writes are the operations that append to the log; a follower sends them
// to the coordinator.
var writes = map[string]bool{
	events.OTAOpPropose: true, events.OTAOpApprove: true, events.OTAOpReady: true,
	events.OTAOpAbort: true, events.OTAOpPolicy: true,
}

// maxLogEntries bounds one log reply; a follower asks again for the rest.
const maxLogEntries = 64

// follower reports whether another peer coordinates the ceremonies.
func (s *Service) follower() bool {
	return s.cfg.Coordinator != "" && s.cfg.Coordinator != s.env.Peer
}

// coordinatorClient addresses the coordinator's ota service through its
// guard. It presents the caller's token when relaying a request that came
// with one, so the coordinator's guard decides on the caller's rights and
// policy, not this peer's; otherwise this peer's own credential.
func (s *Service) coordinatorClient(caller nats.Header) *Client {
	c := &Client{
		Conn: s.env.Conn, Authority: s.cfg.Authority, Peer: s.cfg.Coordinator,
		AuthorityKey: s.cfg.Credential.AuthorityKey, Token: s.cfg.Credential.Token,
		Timeout: s.cfg.RequestTimeout,
	}
	if caller == nil || caller.Get(events.HeaderToken) == "" {
		return c
	}
	// The local guard has checked both headers already.
	token, err := base64.StdEncoding.DecodeString(caller.Get(events.HeaderToken))
	key, kerr := hex.DecodeString(caller.Get(events.HeaderAuthorityKey))
	if err == nil && kerr == nil && len(key) == ed25519.PublicKeySize {
		c.Token, c.AuthorityKey = token, key
	}
	return c
}

// remote sends one request to the coordinator and counts it.
func (s *Service) remote(ctx context.Context, op string, caller nats.Header, req any) (events.OTAStatusReply, error) {
	var reply events.OTAStatusReply
	err := s.coordinatorClient(caller).request(ctx, op, req, &reply)
	s.metrics.meshRequest(ctx, op, err)
	return reply, err
}

// relay sends a write that reached this follower to the coordinator and
// answers with the coordinator's reply.
func (s *Service) relay(ctx context.Context, op string, m *nats.Msg) (any, error) {
	var req any
	switch op {
	case events.OTAOpPropose:
		req = &events.OTAProposeRequest{}
	case events.OTAOpApprove:
		req = &events.OTAApproveRequest{}
	case events.OTAOpReady:
		req = &events.OTAReadyRequest{}
	case events.OTAOpAbort:
		req = &events.OTAAbortRequest{}
	case events.OTAOpPolicy:
		req = &events.OTAPolicyRequest{}
	default:
		return nil, events.Errorf(events.ReasonInternal, "ota %s is not a write", op)
	}
	if err := decode(m, req); err != nil {
		return nil, err
	}
	reply, err := s.remote(ctx, op, m.Header, req)
	if err != nil {
		return nil, err
	}
	s.wake() // copy the new event without waiting for the head notice
	return reply, nil
}

// copyLog copies the coordinator's log after the last message this peer
// holds, until it has all of it.
func (s *Service) copyLog(ctx context.Context) error {
	c := s.coordinatorClient(nil)
	for {
		s.mu.Lock()
		after := s.applied
		s.mu.Unlock()
		req := events.OTALogRequest{Collection: "*", After: after}
		if after > 0 {
			msg, err := s.stream.GetMsg(ctx, after)
			if err != nil {
				return events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("read OTA event %d", after))
			}
			req.AfterDigest = events.OTALogDigest(msg.Subject, msg.Data)
		}
		var reply events.OTALogReply
		err := c.request(ctx, events.OTAOpLog, req, &reply)
		s.metrics.meshRequest(ctx, events.OTAOpLog, err)
		if err != nil {
			return err
		}
		if len(reply.Entries) == 0 {
			return nil
		}
		if err := s.store(ctx, reply.Entries); err != nil {
			return err
		}
	}
}

// store appends entries of the coordinator's log to this peer's OTA
// stream, each at the sequence it has there, and folds them. An entry
// this peer's ledger refuses is stored all the same and skipped by the
// fold, as every replica's fold skips it: the streams stay aligned, and
// nothing this peer judges invalid changes its state.
func (s *Service) store(ctx context.Context, entries []events.OTALogEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range entries {
		if e.Seq <= s.applied {
			continue // another replica of this peer stored it
		}
		if e.Seq != s.applied+1 {
			return events.Errorf(events.ReasonMalformed, "the coordinator sent OTA event %d after %d", e.Seq, s.applied)
		}
		if !strings.HasPrefix(e.Subject, events.OTAPrefix+".") {
			return events.Errorf(events.ReasonMalformed, "the coordinator sent OTA event %d on %q, outside %s.>", e.Seq, e.Subject, events.OTAPrefix)
		}
		next, err := s.ledger.ApplyMessage(e.Subject, e.Data)
		if err != nil {
			s.env.Log.Error("ota: the coordinator's log holds an event this peer refuses; skipping it", "seq", e.Seq, "subject", e.Subject, "err", err)
			next = s.ledger
		}
		ack, err := s.env.JS.PublishMsg(ctx, &nats.Msg{Subject: e.Subject, Data: e.Data}, jetstream.WithExpectLastSequence(s.applied))
		if isWrongLastSequence(err) {
			// Another replica of this peer stored it first.
			return s.catchUpLocked(ctx)
		}
		if err != nil {
			return events.Wrap(events.ReasonUnavailable, err, "copy to the OTA stream")
		}
		if ack.Sequence != e.Seq {
			return events.Errorf(events.ReasonInternal, "OTA event %d of the coordinator was stored at %d here", e.Seq, ack.Sequence)
		}
		s.advanceLocked(ctx, next, ack.Sequence)
	}
	return nil
}

// readLog answers a log request from this peer's OTA stream.
func (s *Service) readLog(ctx context.Context, req events.OTALogRequest) (events.OTALogReply, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return events.OTALogReply{}, events.Wrap(events.ReasonUnavailable, err, "read the OTA stream's state")
	}
	last := info.State.LastSeq
	if req.After > last {
		return events.OTALogReply{}, events.Errorf(events.ReasonConflict, "the asker holds OTA event %d, but this log ends at %d: the logs have forked", req.After, last)
	}
	if req.After > 0 {
		msg, err := s.stream.GetMsg(ctx, req.After)
		if err != nil {
			return events.OTALogReply{}, events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("read OTA event %d", req.After))
		}
		if events.OTALogDigest(msg.Subject, msg.Data) != req.AfterDigest {
			return events.OTALogReply{}, events.Errorf(events.ReasonConflict, "the asker's OTA event %d differs from this log's: the logs have forked", req.After)
		}
	}
	limit := req.Limit
	if limit <= 0 || limit > maxLogEntries {
		limit = maxLogEntries
	}
	reply := events.OTALogReply{Entries: []events.OTALogEntry{}, Last: last}
	for seq := req.After + 1; seq <= last && len(reply.Entries) < limit; seq++ {
		msg, err := s.stream.GetMsg(ctx, seq)
		if err != nil {
			return events.OTALogReply{}, events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("read OTA event %d", seq))
		}
		reply.Entries = append(reply.Entries, events.OTALogEntry{Seq: seq, Subject: msg.Subject, Data: msg.Data})
	}
	return reply, nil
}

// announceHead tells the policy's other peers that the log reached seq.
// It is a hint, sent without waiting for an answer: a peer that misses it
// copies at its next tick. s.mu must be held.
func (s *Service) announceHead(seq uint64) {
	if s.cfg.Credential.Token == nil || s.ledger.Policy == nil {
		return
	}
	for _, id := range slices.Sorted(maps.Keys(s.ledger.Policy.peers.keys)) {
		peer := events.PeerID(id) // a peer id is the key id of its key
		if peer == s.env.Peer {
			continue
		}
		c := &Client{Conn: s.env.Conn, Authority: s.cfg.Authority, Peer: peer, AuthorityKey: s.cfg.Credential.AuthorityKey, Token: s.cfg.Credential.Token}
		msg, err := c.message(events.OTAOpHead, events.OTAHeadRequest{Collection: "*", Last: seq})
		if err == nil {
			err = s.env.Conn.PublishMsg(msg)
		}
		if err != nil {
			s.env.Log.Warn("ota: send a head notice", "peer", peer, "err", err)
		}
	}
}

// copyArtifact fetches the artifact of ceremony id from the coordinator,
// checks it against the proposal this peer's ledger holds, and keeps it.
func (s *Service) copyArtifact(ctx context.Context, id string) ([]byte, error) {
	c, ok := s.Ledger().Ceremonies[id]
	if !ok {
		return nil, events.Errorf(events.ReasonNotFound, "no proposal %q", id)
	}
	data, err := s.coordinatorClient(nil).Fetch(ctx, id)
	s.metrics.meshRequest(ctx, events.OTAOpFetch, err)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != c.Proposal.Artifact.Size || hex.EncodeToString(sum[:]) != c.Proposal.Artifact.SHA256 {
		return nil, events.Errorf(events.ReasonBadProof, "the coordinator served an artifact for %s (%d bytes, sha256 %x) that is not the proposed one (%d bytes, sha256 %s)",
			id, len(data), sum, c.Proposal.Artifact.Size, c.Proposal.Artifact.SHA256)
	}
	if _, err := s.objects.PutBytes(ctx, id, data); err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "keep the artifact")
	}
	return data, nil
}
