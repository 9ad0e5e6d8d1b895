package guard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/capability"
	"google.golang.org/protobuf/proto"
)

// maxDeniedPayload bounds the copy of a rejected event kept in DENIED.
const maxDeniedPayload = 4 << 10

// MaxBatchTokens bounds the distinct tokens in one INGRESS message. Each
// costs a signature chain and a datalog run, and anyone can mint tokens
// for an authority of their own, so the bound caps the work one message
// can demand.
const MaxBatchTokens = 64

// checker decides the facts of INGRESS messages. It holds no connection,
// so the fuzz target and the benchmark drive it directly. It is safe for
// concurrent use.
type checker struct {
	verifier *capability.Verifier
	policy   *policyHolder
	rates    *rateWindows
	maxSkew  time.Duration
	// signatures are the facts whose signatures verified (verified.go);
	// nil verifies every signature every time.
	signatures *signatureCache
	// tokenDeadlines bound the wall time of a token's datalog, growing
	// with each delivery of the message; the zero value is the default.
	tokenDeadlines tokenDeadlines
}

// delivery is what INGRESS says about the delivery of a message. The zero
// value is a first delivery that arrived when it is decided.
type delivery struct {
	// arrived is when INGRESS stored the message (the server's
	// timestamp). The policy's rate windows count facts by it, so a
	// backlog decided at once, after a restart, is judged at the rate it
	// arrived at and not at the rate the guard drains it.
	arrived time.Time
	// attempt is which delivery this is, 1 for the first.
	attempt uint64
}

// tokenDeadlines bound the wall time of a token's datalog by delivery
// (docs/guard.md, "Transient failures"). The bound is wall time, so a
// starved process runs past it for no fault of the token: a timeout is a
// retry, and only a timeout at the last deadline, after several
// deliveries a retry delay apart, denies the token as too costly.
type tokenDeadlines struct {
	first, last time.Duration // zero: defaultFirstTokenDeadline, defaultLastTokenDeadline
}

const (
	defaultFirstTokenDeadline = capability.DefaultEvalDeadline
	// defaultLastTokenDeadline is reached on the sixth delivery (0.1, 0.2,
	// 0.4, 0.8, 1.6, 3.2 s). An honest token's datalog takes tens of
	// microseconds.
	defaultLastTokenDeadline = 32 * defaultFirstTokenDeadline
)

// forAttempt returns the deadline of the given delivery (1 for the first)
// and whether it is the last, doubling the first up to the last. A
// deadline that has passed already (negative, in tests) does not grow.
func (d tokenDeadlines) forAttempt(attempt uint64) (deadline time.Duration, last bool) {
	first, lastDeadline := d.first, d.last
	if first == 0 {
		first = defaultFirstTokenDeadline
	}
	if lastDeadline == 0 {
		lastDeadline = defaultLastTokenDeadline
	}
	deadline = first
	for i := uint64(1); i < attempt && deadline > 0 && deadline < lastDeadline; i++ {
		deadline *= 2
	}
	deadline = min(deadline, lastDeadline)
	return deadline, deadline >= lastDeadline
}

// verdict is what the checker decided about one INGRESS message.
type verdict struct {
	accepted []*events.Fact
	// tokens holds, by hash, the tokens the accepted facts cite.
	tokens  map[string][]byte
	denials []*eventsv1.Denial
	// traces holds, by hex FactID, the trace context the batch carries for
	// a fact (FactBatch.traces), for facts that have one.
	traces map[string]*eventsv1.TraceContext
	// retry is set when a check could not run (the policy failed to
	// evaluate, or the guard is stopping): the message must be decided
	// again later, and nothing in this verdict may be recorded.
	retry error
}

// check runs every fact of the INGRESS message through, in order: decode,
// size, schema version, device signature, token (rooted at the fact's
// authority, naming its device, granting write on its collection, not
// expired, not revoked), clock skew, policy. Facts that share a token,
// device and collection are authorised together.
func (c *checker) check(ctx context.Context, subject string, data []byte, now time.Time, at delivery) verdict {
	if at.arrived.IsZero() {
		at.arrived = now
	}
	var v verdict
	deny := func(err error, f *events.Fact, payload []byte) {
		v.denials = append(v.denials, denial(subject, err, f, payload, now))
	}
	batch, err := decodeBatch(subject, data)
	if err != nil {
		deny(err, nil, data)
		return v
	}
	tokens := make(map[string][]byte, len(batch.tokens))
	for _, t := range batch.tokens {
		tokens[events.TokenHash(t)] = t
	}

	// Decode, size, schema version and signature, fact by fact.
	facts := make([]*events.Fact, len(batch.facts))
	errs := make([]error, len(batch.facts))
	for i, sf := range batch.facts {
		facts[i], errs[i] = events.FactFromProto(sf)
		if errs[i] == nil && facts[i].Authority != batch.authority {
			errs[i] = events.Errorf(events.ReasonMalformed, "fact of authority %s published on %s", facts[i].Authority, subject)
		}
	}
	c.verifySignatures(facts, errs)
	for i, f := range facts {
		if tc := batch.traceOf(i); f != nil && tc != nil {
			if v.traces == nil {
				v.traces = map[string]*eventsv1.TraceContext{}
			}
			v.traces[f.ID.String()] = tc
		}
	}

	type groupKey struct{ token, device, collection string }
	groups := map[groupKey][]*events.Fact{}
	var order []groupKey
	seen := map[events.FactID]bool{}
	for i, f := range facts {
		if errs[i] != nil {
			b, _ := proto.Marshal(batch.facts[i])
			deny(errs[i], f, b)
			continue
		}
		if seen[f.ID] {
			continue // the same fact twice in one batch is one fact
		}
		seen[f.ID] = true
		k := groupKey{f.TokenHash(), string(f.Device), f.Collection()}
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], f)
	}

	// Token, once per group; then clock skew and policy per fact.
	for _, k := range order {
		facts := groups[k]
		token := tokens[k.token]
		err := c.verifyToken(token, k.token, facts[0], now, at.attempt)
		for _, f := range facts {
			ferr := err
			if ferr == nil {
				ferr = c.checkFact(ctx, subject, f, now, at.arrived)
			}
			if transient(ferr) {
				return verdict{retry: ferr}
			}
			if ferr != nil {
				deny(ferr, f, f.Marshal())
				continue
			}
			v.accepted = append(v.accepted, f)
			if v.tokens == nil {
				v.tokens = map[string][]byte{}
			}
			v.tokens[k.token] = token
		}
	}
	return v
}

// minFactsPerVerifier is the fewest signatures worth a goroutine of their
// own. ed25519 verification is the guard's main cost, so a large batch is
// verified on every core.
const minFactsPerVerifier = 16

// verifySignatures sets errs[i] for each fact whose device signature does
// not verify, skipping facts that already failed.
func verifySignatures(facts []*events.Fact, errs []error) {
	verify := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if errs[i] == nil {
				errs[i] = facts[i].VerifySignature()
			}
		}
	}
	workers := min(runtime.GOMAXPROCS(0), len(facts)/minFactsPerVerifier)
	if workers <= 1 {
		verify(0, len(facts))
		return
	}
	var wg sync.WaitGroup
	per := (len(facts) + workers - 1) / workers
	for lo := 0; lo < len(facts); lo += per {
		wg.Go(func() { verify(lo, min(lo+per, len(facts))) })
	}
	wg.Wait()
}

// transient reports whether err says a check could not run, rather than
// that the fact fails it.
func transient(err error) bool {
	switch events.ReasonOf(err) {
	case events.ReasonInternal, events.ReasonUnavailable:
		return true
	}
	return false
}

// verifyToken checks that token grants f's device write on f's
// collection, within the datalog deadline of this delivery.
func (c *checker) verifyToken(token []byte, hash string, f *events.Fact, now time.Time, attempt uint64) error {
	if token == nil {
		return events.Errorf(events.ReasonBadToken, "token %.12s cited by the fact is not in the batch", hash)
	}
	deadline, last := c.tokenDeadlines.forAttempt(attempt)
	_, err := c.verifier.Verify(token, capability.Request{
		Authority:    f.AuthorityKey(),
		Device:       f.DeviceKey(),
		Right:        capability.Right{Collection: f.Collection(), Op: capability.OpWrite},
		Now:          now,
		EvalDeadline: deadline,
	})
	if last && errors.Is(err, capability.ErrEvalTimeout) {
		return events.Wrap(events.ReasonBadToken, err, fmt.Sprintf("token %.12s is too costly to evaluate (delivery %d)", hash, attempt))
	}
	return err
}

// checkFact runs the per-fact checks that follow the token; arrived is
// when INGRESS stored the fact's message.
func (c *checker) checkFact(ctx context.Context, subject string, f *events.Fact, now, arrived time.Time) error {
	if limit := now.Add(c.maxSkew); f.HLC.Time().After(limit) {
		return events.Errorf(events.ReasonClockSkew, "fact %s has hlc %s, more than %s after this peer's clock", f.ID, f.HLC, c.maxSkew)
	}
	count, window := c.rates.next(f.Authority, arrived)
	in := PolicyInput{
		Kind:          "fact",
		Subject:       subject,
		Authority:     f.Authority,
		Device:        f.Device,
		Collection:    f.Collection(),
		Op:            string(capability.OpWrite),
		Document:      f.Document(),
		Delete:        f.IsDelete(),
		Size:          len(f.Body),
		HLCMillis:     f.HLC.WallMillis,
		NowMillis:     now.UnixMilli(),
		RateCount:     count,
		RateWindowSec: int(window / time.Second),
	}
	return c.policy.current.Load().Decide(ctx, &in)
}

// ingressBatch is a decoded INGRESS message.
type ingressBatch struct {
	authority events.AuthorityID
	facts     []*eventsv1.SignedFact
	tokens    [][]byte
	traces    []*eventsv1.TraceContext
}

// traceOf returns the trace context the batch carries for fact i, or nil.
func (b *ingressBatch) traceOf(i int) *eventsv1.TraceContext {
	if i < len(b.traces) && b.traces[i].GetTraceparent() != "" {
		return b.traces[i]
	}
	return nil
}

// decodeBatch checks the message as a whole: its subject, size and shape.
func decodeBatch(subject string, data []byte) (*ingressBatch, error) {
	auth, err := events.ParseIngressFactSubject(subject)
	if err != nil {
		return nil, err
	}
	if len(data) > events.MaxIngressMessage {
		return nil, events.Errorf(events.ReasonTooLarge, "batch is %d bytes, limit %d", len(data), events.MaxIngressMessage)
	}
	var fb eventsv1.FactBatch
	if err := proto.Unmarshal(data, &fb); err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "decode fact batch")
	}
	if len(fb.GetFacts()) == 0 {
		return nil, events.Errorf(events.ReasonMalformed, "batch holds no facts")
	}
	if len(fb.GetFacts()) > events.MaxBatchFacts || len(fb.GetTokens()) > MaxBatchTokens {
		return nil, events.Errorf(events.ReasonTooLarge, "batch holds %d facts and %d tokens, limits %d and %d",
			len(fb.GetFacts()), len(fb.GetTokens()), events.MaxBatchFacts, MaxBatchTokens)
	}
	return &ingressBatch{authority: auth, facts: fb.GetFacts(), tokens: fb.GetTokens(), traces: fb.GetTraces()}, nil
}

// denial records a rejection for DENIED.
func denial(subject string, err error, f *events.Fact, payload []byte, now time.Time) *eventsv1.Denial {
	d := &eventsv1.Denial{
		Reason:             string(events.ReasonOf(err)),
		Detail:             detailOf(err),
		Subject:            subject,
		Payload:            bytes.Clone(payload[:min(len(payload), maxDeniedPayload)]),
		DeniedAtUnixMillis: now.UnixMilli(),
	}
	if f != nil {
		d.FactId = f.ID.String()
	}
	return d
}

// detailOf is the human part of err, without the reason prefix.
func detailOf(err error) string {
	var e *events.Error
	if errors.As(err, &e) {
		if e.Err != nil {
			return e.Detail + ": " + e.Err.Error()
		}
		return e.Detail
	}
	return err.Error()
}

// rateWindows counts facts per authority in fixed windows of the clock, the
// count the policy's rate limits compare against.
type rateWindows struct {
	mu     sync.Mutex
	window time.Duration
	counts map[events.AuthorityID]rateCount
}

type rateCount struct {
	window int64
	count  int
}

func newRateWindows(window time.Duration) *rateWindows {
	return &rateWindows{window: window, counts: map[events.AuthorityID]rateCount{}}
}

// next counts one more fact of auth at now and returns the count in the
// current window, and the window's length.
func (r *rateWindows) next(auth events.AuthorityID, now time.Time) (int, time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := now.UnixNano() / int64(r.window)
	rc := r.counts[auth]
	if rc.window != w {
		if len(r.counts) > 100000 { // forget idle authorities now and then
			clear(r.counts)
		}
		rc = rateCount{window: w}
	}
	rc.count++
	r.counts[auth] = rc
	return rc.count, r.window
}
