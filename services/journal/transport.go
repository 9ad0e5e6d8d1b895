package journal

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/query"
	"github.com/nats-io/nats.go"
)

// serve subscribes the request handlers on fs.svc.journal.<op>.*. Every
// replica receives every request (no queue group) and only the one that
// serves the authority's partition answers, so requests reach the owner
// without a forwarding hop or another subject. The guard has already
// checked that the caller may read the request's collection of the
// authority in the subject.
func (r *run) serve() ([]*nats.Subscription, error) {
	handlers := map[string]func(part *partition, auth events.AuthorityID, body []byte) (any, error){
		events.OpGet:   r.get,
		events.OpQuery: r.query,
		events.OpCount: r.count,
	}
	var subs []*nats.Subscription
	for op, handle := range handlers {
		sub, err := r.env.Conn.Subscribe(events.ServiceSubject(events.JournalProto, op, "*"), func(m *nats.Msg) {
			addr, err := events.ParseAPISubject(events.ServicePrefix, m.Subject)
			if err != nil {
				_ = bus.Respond(m, nil, err) // no one owns a malformed subject
				return
			}
			part := r.parts.serving(addr.Authority)
			if part == nil {
				return // another replica answers
			}
			reply, err := handle(part, addr.Authority, m.Data)
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

// decodeRequest refuses unknown members: a misspelt "where" must be an
// error, not a query that matches everything.
func decodeRequest(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return events.Wrap(events.ReasonMalformed, err, "request body is not the expected JSON")
	}
	return nil
}

func (r *run) get(part *partition, auth events.AuthorityID, body []byte) (any, error) {
	var req events.GetRequest
	if err := decodeRequest(body, &req); err != nil {
		return nil, err
	}
	if err := events.CheckName("collection", req.Collection); err != nil {
		return nil, err
	}
	if err := events.CheckName("document id", req.ID); err != nil {
		return nil, err
	}
	var (
		doc   events.Document
		found bool
	)
	part.state.read(auth, req.Collection, func(st *fold.State, _ *query.Index) {
		if st != nil {
			doc, found = st.Get(req.Collection, req.ID)
		}
	})
	if !found || doc.Deleted && !req.IncludeDeleted {
		return nil, events.Errorf(events.ReasonNotFound, "document %s/%s does not exist", req.Collection, req.ID)
	}
	return events.GetReply{Document: doc}, nil
}

func (r *run) query(part *partition, auth events.AuthorityID, body []byte) (any, error) {
	var req events.QueryRequest
	if err := decodeRequest(body, &req); err != nil {
		return nil, err
	}
	q, err := query.FromRequest(req)
	if err != nil {
		return nil, err
	}
	reply := events.QueryReply{Documents: []events.Document{}}
	reply.Seq = part.state.read(auth, q.Collection, func(st *fold.State, ix *query.Index) {
		if st != nil {
			reply.Documents, reply.NextCursor = q.Page(st, ix)
		}
	})
	return reply, nil
}

func (r *run) count(part *partition, auth events.AuthorityID, body []byte) (any, error) {
	var req events.CountRequest
	if err := decodeRequest(body, &req); err != nil {
		return nil, err
	}
	q, err := query.FromSelection(req.Selection)
	if err != nil {
		return nil, err
	}
	var reply events.CountReply
	reply.Seq = part.state.read(auth, q.Collection, func(st *fold.State, ix *query.Index) {
		if st != nil {
			reply.Count = q.Count(st, ix)
		}
	})
	return reply, nil
}

// announce publishes each visible change on core NATS, carrying on the
// trace of the JOURNAL message that caused it. Observers that miss one
// resynchronise with a query, so a failed publish is not retried.
func (r *run) announce(ctx context.Context, facts []fact, changes []change) {
	traces := make(map[uint64]nats.Header, len(facts))
	for _, f := range facts {
		traces[f.seq] = f.msg.Headers()
	}
	for _, c := range changes {
		doc := c.change.After
		msg := nats.NewMsg(events.ChangesSubject(c.authority, doc.Collection, doc.ID))
		bus.InjectTrace(bus.ExtractTrace(ctx, traces[c.seq]), msg.Header)
		data, err := events.EncodeChange(events.Change{Authority: c.authority, Document: doc, Fact: c.change.Fact.String(), Seq: c.seq})
		if err != nil {
			r.logger().Error("journal: a change does not encode", "subject", msg.Subject, "err", err)
			continue
		}
		msg.Data = data
		_ = r.env.Conn.PublishMsg(msg)
	}
}
