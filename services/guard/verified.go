package guard

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// A fact's signature verifies or not as a function of its bytes alone: its
// body (whose SHA-256 the guard computes as the FactID when it decodes the
// fact) and its signature. So a guard that verified a fact once may skip
// the verification when the same body comes again with the same signature
// bytes: the cache below holds, per FactID, the signature that verified
// with that body, and a copy with any other signature is verified afresh.
//
// It serves a restore (events.GuardOpVerify): the snapshot service must
// check every fact of a snapshot before it loads any, and the guard must
// check every fact it lets into JOURNAL. Asking the guard to do the first
// check means each signature is verified once, by the guard, before
// anything is loaded; loading then finds the ids verified. Token, policy
// and clock checks still run on every fact as it is loaded. With several
// guard replicas, a batch may land on another replica, which verifies it
// again.

// maxVerified bounds the cache; it is cleared when full.
const maxVerified = 1 << 18

// signatureCache holds, per FactID, the signature that verified with the
// fact's body.
type signatureCache struct {
	mu   sync.Mutex
	sigs map[events.FactID]string
}

func newSignatureCache() *signatureCache {
	return &signatureCache{sigs: map[events.FactID]string{}}
}

// verified reports whether f's body verified before with f's signature.
func (c *signatureCache) verified(f *events.Fact) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	sig, ok := c.sigs[f.ID]
	return ok && sig == string(f.Signature)
}

// add records facts whose signatures verified.
func (c *signatureCache) add(facts ...*events.Fact) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range facts {
		if len(c.sigs) >= maxVerified {
			clear(c.sigs)
		}
		c.sigs[f.ID] = string(f.Signature)
	}
}

// verifySignatures sets errs[i] for each fact whose device signature does
// not verify, skipping facts that already failed and those verified
// before, and remembers those that verified.
func (c *checker) verifySignatures(facts []*events.Fact, errs []error) {
	todo := make([]*events.Fact, 0, len(facts))
	todoErrs := make([]error, 0, len(facts))
	at := make([]int, 0, len(facts))
	for i, f := range facts {
		if errs[i] == nil && !c.signatures.verified(f) {
			todo, todoErrs, at = append(todo, f), append(todoErrs, nil), append(at, i)
		}
	}
	verifySignatures(todo, todoErrs)
	ok := make([]*events.Fact, 0, len(todo))
	for j, err := range todoErrs {
		errs[at[j]] = err
		if err == nil {
			ok = append(ok, todo[j])
		}
	}
	c.signatures.add(ok...)
}

// serveVerify answers GuardOpVerify: the body is an eventsv1.FactBatch of
// the authority's facts; the reply is {"verified": n}, or the first
// failure with its reason (bad_signature, malformed).
func (g *running) serveVerify(ctx context.Context) (*nats.Subscription, error) {
	return g.env.Conn.QueueSubscribe(events.ServiceSubject(events.GuardProto, events.GuardOpVerify, "*"), Name, func(m *nats.Msg) {
		if !g.startRequest() {
			g.reply(m, nil, events.Errorf(events.ReasonUnavailable, "the guard is shutting down"))
			return
		}
		go func() {
			defer g.requests.Done()
			n, err := g.verifyBatch(m)
			var out *nats.Msg
			if err == nil {
				b, _ := json.Marshal(events.GuardVerifyReply{Verified: n})
				out = &nats.Msg{Data: b}
			}
			g.reply(m, out, err)
		}()
	})
}

func (g *running) verifyBatch(m *nats.Msg) (int, error) {
	addr, err := events.ParseAPISubject(events.ServicePrefix, m.Subject)
	if err != nil {
		return 0, err
	}
	var batch eventsv1.FactBatch
	if err := proto.Unmarshal(m.Data, &batch); err != nil {
		return 0, events.Wrap(events.ReasonMalformed, err, "verify: body is not a FactBatch")
	}
	facts := make([]*events.Fact, len(batch.GetFacts()))
	errs := make([]error, len(facts))
	for i, sf := range batch.GetFacts() {
		facts[i], errs[i] = events.FactFromProto(sf)
		if errs[i] == nil && facts[i].Authority != addr.Authority {
			errs[i] = events.Errorf(events.ReasonMalformed, "fact %s is of authority %s, not %s", facts[i].ID, facts[i].Authority, addr.Authority)
		}
	}
	g.check.verifySignatures(facts, errs)
	for i, err := range errs {
		if err != nil {
			if facts[i] != nil {
				return 0, events.Wrap(events.ReasonOf(err), err, "fact "+facts[i].ID.String())
			}
			return 0, err
		}
	}
	return len(facts), nil
}
