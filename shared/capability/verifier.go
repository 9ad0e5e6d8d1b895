package capability

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"sync"
	"time"

	"github.com/biscuit-auth/biscuit-go/v2"
	"github.com/biscuit-auth/biscuit-go/v2/datalog"
	"github.com/biscuit-auth/biscuit-go/v2/parser"
	"github.com/factsync/factsync/events"
)

// The verifier's datalog is parsed once, at package load: every check below
// adds these same values to a fresh authorizer.
var (
	deviceCheck = mustParse(parser.FromStringCheck(`check if device($d), request_device($d)`))
	allowPolicy = mustParse(parser.FromStringPolicy(`allow if right($c, $op), collection($c), operation($op)`))
	deviceQuery = mustParse(parser.FromStringRule(`named_device($d) <- device($d)`))
)

func mustParse[T any](v T, err error) T {
	if err != nil {
		panic("capability: built-in datalog does not parse: " + err.Error())
	}
	return v
}

// DefaultEvalDeadline bounds the wall time of one token's datalog when the
// Request names no deadline. biscuit-go's own default is 2ms, which a busy
// machine misses for no fault of the token.
const DefaultEvalDeadline = 100 * time.Millisecond

// ErrEvalTimeout is wrapped by Verify's error when the token's datalog did
// not finish within the request's EvalDeadline. The deadline is wall time,
// so a starved process misses it for no fault of the token: Verify reports
// it as unavailable (try again), never as a verdict on the token. Only a
// caller that has given the evaluation ample time, more than once, may
// blame the token for it.
var ErrEvalTimeout = errors.New("token's datalog did not finish in time")

// datalogLimits bound the evaluation of one token. The fact and iteration
// limits bound the work and fail the same way every time, so they are the
// token's fault; the deadline stops only a token whose rules are costly by
// construction, and fails only as ErrEvalTimeout.
func datalogLimits(deadline time.Duration) biscuit.AuthorizerOption {
	if deadline == 0 {
		deadline = DefaultEvalDeadline
	}
	return biscuit.WithWorldOptions(
		datalog.WithMaxDuration(deadline),
		datalog.WithMaxFacts(1000),
		datalog.WithMaxIterations(100),
	)
}

// evalError turns a run of the token's datalog that hit its deadline into
// a transient error wrapping ErrEvalTimeout, and leaves other errors alone.
func evalError(err error, deadline time.Duration) error {
	if !errors.Is(err, datalog.ErrWorldRunLimitTimeout) {
		return err
	}
	if deadline == 0 {
		deadline = DefaultEvalDeadline
	}
	return events.Wrap(events.ReasonUnavailable, ErrEvalTimeout, "the evaluation ran past "+deadline.String())
}

// Request is what a token must allow.
type Request struct {
	// Authority is the root public key the token must be rooted at.
	Authority ed25519.PublicKey
	// Device, when set, must be the device the token names. Requests that
	// carry no device signature leave it nil and learn the device from the
	// Grant.
	Device ed25519.PublicKey
	// Right is the (collection, op) asked for.
	Right Right
	// Now is the verifier's time, from its injected clock.
	Now time.Time
	// EvalDeadline bounds the wall time of the token's datalog; zero means
	// DefaultEvalDeadline. A negative deadline has passed already, so
	// every evaluation times out (tests use it).
	EvalDeadline time.Duration
}

// Grant describes a token that allowed a request.
type Grant struct {
	TokenHash     string
	Device        ed25519.PublicKey
	RevocationIDs []string
}

// Verifier checks tokens. It remembers tokens whose signatures verified
// (by hash) so a token shared by many facts costs its signature checks
// once, and it holds the set of revoked ids. It is safe for concurrent use.
type Verifier struct {
	mu        sync.RWMutex
	verified  map[string]*verifiedToken
	revoked   map[revokedKey]struct{}
	maxCached int
}

// revokedKey scopes a revocation id to the authority that revoked it, so
// one authority cannot revoke another's tokens by learning their ids.
type revokedKey struct {
	authority events.AuthorityID
	id        string
}

type verifiedToken struct {
	token  *biscuit.Biscuit
	root   ed25519.PublicKey
	auth   events.AuthorityID
	device ed25519.PublicKey
	ids    []string
}

// NewVerifier returns a Verifier caching up to maxCached verified tokens
// (a default of 10000 when maxCached <= 0).
func NewVerifier(maxCached int) *Verifier {
	if maxCached <= 0 {
		maxCached = 10000
	}
	return &Verifier{
		verified:  map[string]*verifiedToken{},
		revoked:   map[revokedKey]struct{}{},
		maxCached: maxCached,
	}
}

// Verify checks, in this order, that token is rooted at req.Authority,
// names req.Device, grants req.Right and has not expired at req.Now, and
// that none of its revocation ids is revoked. Errors carry the reasons
// bad_token, wrong_device, no_right, token_expired and token_revoked, or
// unavailable when the evaluation ran past req.EvalDeadline (the error
// then wraps ErrEvalTimeout).
func (v *Verifier) Verify(token []byte, req Request) (Grant, error) {
	if req.Now.IsZero() {
		return Grant{}, events.Errorf(events.ReasonInternal, "capability: verify without a time")
	}
	if err := req.Right.Validate(); err != nil {
		return Grant{}, err
	}
	hash := events.TokenHash(token)
	vt, err := v.rooted(hash, token, req.Authority, req.EvalDeadline)
	if err != nil {
		return Grant{}, err
	}
	if req.Device != nil && !bytes.Equal(req.Device, vt.device) {
		return Grant{}, events.Errorf(events.ReasonWrongDevice, "token %.12s names device %s, not %s",
			hash, events.DeviceIDOf(vt.device), events.DeviceIDOf(req.Device))
	}
	if err := authorize(vt, req.Right, req.Now, req.EvalDeadline); err != nil {
		if errors.Is(err, ErrEvalTimeout) {
			return Grant{}, err
		}
		// Would the token allow it at the beginning of time? Then only
		// an expiry check stands in the way.
		switch err := authorize(vt, req.Right, time.Unix(0, 0), req.EvalDeadline); {
		case err == nil:
			return Grant{}, events.Errorf(events.ReasonTokenExpired, "token %.12s has expired", hash)
		case errors.Is(err, ErrEvalTimeout):
			return Grant{}, err
		}
		return Grant{}, events.Wrap(events.ReasonNoRight, err, "token "+hash[:12]+" does not grant "+req.Right.String())
	}
	if id, ok := v.revokedID(vt); ok {
		return Grant{}, events.Errorf(events.ReasonTokenRevoked, "token %.12s is revoked (id %.16s…)", hash, id)
	}
	return Grant{TokenHash: hash, Device: vt.device, RevocationIDs: vt.ids}, nil
}

// rooted returns the decoded token once its signature chain has verified
// against root, from the cache when it has before.
func (v *Verifier) rooted(hash string, token []byte, root ed25519.PublicKey, deadline time.Duration) (*verifiedToken, error) {
	v.mu.RLock()
	vt := v.verified[hash]
	v.mu.RUnlock()
	if vt != nil {
		if !bytes.Equal(vt.root, root) {
			return nil, events.Errorf(events.ReasonBadToken, "token %.12s is not rooted at authority %s", hash, events.AuthorityIDOf(root))
		}
		return vt, nil
	}
	if len(root) != ed25519.PublicKeySize {
		return nil, events.Errorf(events.ReasonBadToken, "authority key is %d bytes, want %d", len(root), ed25519.PublicKeySize)
	}
	b, err := unmarshal(token)
	if err != nil {
		return nil, err
	}
	if _, err := b.Authorizer(root); err != nil {
		return nil, events.Wrap(events.ReasonBadToken, err, "token "+hash[:12]+" is not rooted at authority "+string(events.AuthorityIDOf(root)))
	}
	device, err := namedDevice(b, deadline)
	if err != nil {
		if errors.Is(err, datalog.ErrWorldRunLimitTimeout) {
			return nil, evalError(err, deadline)
		}
		return nil, err
	}
	vt = &verifiedToken{token: b, root: bytes.Clone(root), auth: events.AuthorityIDOf(root), device: device, ids: revocationIDs(b)}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.revokedIDLocked(vt); !ok {
		if len(v.verified) >= v.maxCached {
			for h := range v.verified { // evict an arbitrary entry
				delete(v.verified, h)
				break
			}
		}
		v.verified[hash] = vt
	}
	return vt, nil
}

// namedDevice returns the one device key the authority block names.
func namedDevice(b *biscuit.Biscuit, deadline time.Duration) (ed25519.PublicKey, error) {
	a, err := biscuit.NewVerifier(b, datalogLimits(deadline))
	if err != nil {
		return nil, events.Wrap(events.ReasonBadToken, err, "read token")
	}
	_ = a.Authorize() // loads the authority block; its verdict is irrelevant here
	facts, err := a.Query(deviceQuery)
	if errors.Is(err, datalog.ErrWorldRunLimitTimeout) {
		return nil, err // the caller reports it as a timeout, not as the token's fault
	}
	if err != nil {
		return nil, events.Wrap(events.ReasonBadToken, err, "read token's device")
	}
	if len(facts) != 1 || len(facts[0].IDs) != 1 {
		return nil, events.Errorf(events.ReasonBadToken, "token names %d devices, want exactly one", len(facts))
	}
	key, ok := facts[0].IDs[0].(biscuit.Bytes)
	if !ok || len(key) != ed25519.PublicKeySize {
		return nil, events.Errorf(events.ReasonBadToken, "token's device is not a %d-byte key", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(key), nil
}

// authorize runs the token's datalog with the request's ambient facts.
func authorize(vt *verifiedToken, right Right, now time.Time, deadline time.Duration) error {
	a, err := biscuit.NewVerifier(vt.token, datalogLimits(deadline))
	if err != nil {
		return err
	}
	a.AddFact(fact("time", biscuit.Date(now)))
	a.AddFact(fact("operation", biscuit.String(string(right.Op))))
	a.AddFact(fact("collection", biscuit.String(right.Collection)))
	a.AddFact(fact("collection", biscuit.String(AnyCollection)))
	for _, r := range requestStrings(right) {
		a.AddFact(fact("request", biscuit.String(r)))
	}
	a.AddFact(fact("request_device", biscuit.Bytes(vt.device)))
	a.AddCheck(deviceCheck)
	a.AddPolicy(allowPolicy)
	err = a.Authorize()
	if errors.Is(err, datalog.ErrWorldRunLimitTimeout) {
		return evalError(err, deadline)
	}
	if errors.Is(err, datalog.ErrWorldRunLimitMaxFacts) || errors.Is(err, datalog.ErrWorldRunLimitMaxIterations) {
		return events.Wrap(events.ReasonBadToken, err, "token's datalog exceeds the evaluation limits")
	}
	return err
}

// Revoke adds revocation ids (hex) of tokens rooted at authority to the
// revoked set and drops every cached token that carries one of them.
func (v *Verifier) Revoke(authority events.AuthorityID, ids ...string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, id := range ids {
		v.revoked[revokedKey{authority, id}] = struct{}{}
	}
	for hash, vt := range v.verified {
		if _, ok := v.revokedIDLocked(vt); ok {
			delete(v.verified, hash)
		}
	}
}

// IsRevoked reports whether authority has revoked the revocation id (hex).
func (v *Verifier) IsRevoked(authority events.AuthorityID, id string) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	_, ok := v.revoked[revokedKey{authority, id}]
	return ok
}

// Cached reports how many verified tokens the cache holds.
func (v *Verifier) Cached() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.verified)
}

func (v *Verifier) revokedID(vt *verifiedToken) (string, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.revokedIDLocked(vt)
}

// revokedIDLocked returns the first of the token's ids that its authority
// has revoked. Lock must be held.
func (v *Verifier) revokedIDLocked(vt *verifiedToken) (string, bool) {
	for _, id := range vt.ids {
		if _, ok := v.revoked[revokedKey{vt.auth, id}]; ok {
			return id, true
		}
	}
	return "", false
}
