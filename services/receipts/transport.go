package receipts

import (
	"context"
	"encoding/json"
	"github.com/factsync/factsync/shared/bus"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
	"golang.org/x/mod/sumdb/tlog"
)

// The request/reply protocol, on fs.svc.receipts.<op>.<auth> (queue group
// "receipts"), reached by clients through fs.api and by peers through
// fs.peer via the guard. Bodies are JSON; errors are events.EncodeError
// bodies with the Fs-Reason header.
const (
	// OpGet returns the Receipt of a fact of the authority in the subject.
	OpGet = "get"
	// OpConsistency returns a consistency proof between two tree sizes.
	OpConsistency = "consistency"
	// OpCheckpoint returns the latest signed checkpoint.
	OpCheckpoint = "checkpoint"
)

// GetRequest asks for the receipt of one fact.
type GetRequest struct {
	FactID string `json:"fact_id"`
}

// ConsistencyRequest asks for the proof that the tree of OldSize leaves is
// a prefix of the tree of NewSize leaves. NewSize 0 means the latest
// signed checkpoint, which the reply then carries.
type ConsistencyRequest struct {
	OldSize int64 `json:"old_size"`
	NewSize int64 `json:"new_size,omitempty"`
}

// ConsistencyReply carries a consistency proof.
type ConsistencyReply struct {
	OldSize    int64          `json:"old_size"`
	NewSize    int64          `json:"new_size"`
	Proof      tlog.TreeProof `json:"proof"`
	Checkpoint string         `json:"checkpoint,omitempty"` // the checkpoint of NewSize when it was asked for as 0
}

// CheckpointReply carries the latest signed checkpoint.
type CheckpointReply struct {
	Checkpoint string `json:"checkpoint"`
}

// serve subscribes the request handlers.
func (r *run) serve() ([]*nats.Subscription, error) {
	handlers := map[string]func(auth events.AuthorityID, body []byte) (any, error){
		OpGet:         r.get,
		OpConsistency: r.consistency,
		OpCheckpoint:  r.latest,
	}
	var subs []*nats.Subscription
	for op, handle := range handlers {
		sub, err := r.env.Conn.QueueSubscribe(events.ServiceSubject(Name, op, "*"), Name, func(m *nats.Msg) {
			reply, err := handleRequest(m, handle)
			_ = bus.Respond(m, reply, err)
		})
		if err != nil {
			for _, s := range subs {
				_ = s.Unsubscribe()
			}
			return nil, err
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

func handleRequest(m *nats.Msg, handle func(events.AuthorityID, []byte) (any, error)) (any, error) {
	addr, err := events.ParseAPISubject(events.ServicePrefix, m.Subject)
	if err != nil {
		return nil, err
	}
	return handle(addr.Authority, m.Data)
}

func decodeRequest(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return events.Wrap(events.ReasonMalformed, err, "request body is not the expected JSON")
	}
	return nil
}

// get answers a receipt only for a fact of the authority the request was
// authorised for; for any other fact it answers not found, so a token for
// one authority learns nothing about another's facts.
func (r *run) get(auth events.AuthorityID, body []byte) (any, error) {
	var req GetRequest
	if err := decodeRequest(body, &req); err != nil {
		return nil, err
	}
	id, err := events.ParseFactID(req.FactID)
	if err != nil {
		return nil, err
	}
	notFound := events.Errorf(events.ReasonNotFound, "fact %s of authority %s is not in this peer's receipts log", id, auth)
	index, ok := r.log.Lookup(id)
	if !ok {
		return nil, notFound
	}
	if leaf, err := r.log.Leaf(index); err != nil || leaf.Authority != auth {
		return nil, notFound
	}
	return r.log.Receipt(id)
}

func (r *run) consistency(_ events.AuthorityID, body []byte) (any, error) {
	var req ConsistencyRequest
	if err := decodeRequest(body, &req); err != nil {
		return nil, err
	}
	reply := ConsistencyReply{OldSize: req.OldSize, NewSize: req.NewSize}
	if req.NewSize == 0 {
		last := r.log.LastCheckpoint()
		if last == nil {
			return nil, events.Errorf(events.ReasonNotFound, "this peer has signed no checkpoint yet")
		}
		reply.NewSize, reply.Checkpoint = last.Size, string(last.Note)
	}
	proof, err := r.log.ProveConsistency(reply.OldSize, reply.NewSize)
	if err != nil {
		return nil, err
	}
	reply.Proof = proof
	return reply, nil
}

func (r *run) latest(events.AuthorityID, []byte) (any, error) {
	last := r.log.LastCheckpoint()
	if last == nil {
		return nil, events.Errorf(events.ReasonNotFound, "this peer has signed no checkpoint yet")
	}
	return CheckpointReply{Checkpoint: string(last.Note)}, nil
}

// RequestSource fetches a peer's checkpoints and consistency proofs by
// NATS request. Across the mesh, Subject is PeerSubjects(peer) and Header
// carries what that peer's guard asks for (token, authority); inside one
// peer (and in tests) it may address fs.svc directly.
type RequestSource struct {
	Conn    *nats.Conn
	Subject func(op string) string
	Header  nats.Header
}

// PeerSubjects addresses the receipts protocol of peer across the mesh.
func PeerSubjects(peer events.PeerID) func(op string) string {
	return func(op string) string { return events.PeerSubject(peer, Name, op) }
}

// Latest implements CheckpointSource.
func (s RequestSource) Latest(ctx context.Context) ([]byte, error) {
	var reply CheckpointReply
	if err := s.request(ctx, OpCheckpoint, struct{}{}, &reply); err != nil {
		return nil, err
	}
	return []byte(reply.Checkpoint), nil
}

// Consistency implements CheckpointSource.
func (s RequestSource) Consistency(ctx context.Context, oldSize, newSize int64) (tlog.TreeProof, error) {
	var reply ConsistencyReply
	if err := s.request(ctx, OpConsistency, ConsistencyRequest{OldSize: oldSize, NewSize: newSize}, &reply); err != nil {
		return nil, err
	}
	if reply.OldSize != oldSize || reply.NewSize != newSize {
		return nil, events.Errorf(events.ReasonBadProof, "asked for a consistency proof from %d to %d, got one from %d to %d", oldSize, newSize, reply.OldSize, reply.NewSize)
	}
	return reply.Proof, nil
}

func (s RequestSource) request(ctx context.Context, op string, req, reply any) error {
	m := nats.NewMsg(s.Subject(op))
	for k, v := range s.Header {
		m.Header[k] = v
	}
	events.SetProtocolVersion(m.Header)
	m.Data = mustJSON(req)
	resp, err := s.Conn.RequestMsgWithContext(ctx, m)
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "receipts "+op+" request")
	}
	if e := events.DecodeError(resp.Data); e != nil {
		return e
	}
	if err := json.Unmarshal(resp.Data, reply); err != nil {
		return events.Wrap(events.ReasonMalformed, err, "receipts "+op+" reply")
	}
	return nil
}
