// Package antientropy reconciles an authority's fact set between peers.
//
// Every peer keeps, per authority, an index of every accepted fact (a
// negentropy B+tree and a rateless-IBLT sketch, both updated fact by fact
// from JOURNAL). As a responder it answers sessions from other peers
// (responder.go); as an initiator it runs sessions against them, pulls
// the facts it lacks into its own INGRESS and pushes the facts they lack
// to theirs, where each side's guard checks every fact again
// (initiator.go). Which peers, when and how often is peers.go.
//
// Requests arrive on fs.svc.antientropy.<op>.<authority> only after this
// peer's guard has checked the requester's `sync` right on the authority
// (docs/antientropy.md), so nothing, not even a fingerprint, is revealed
// to a peer without it.
package antientropy

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/antientropy/riblt"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/protobuf/proto"
)

// Name is the service's name and queue group.
const Name = events.AntiEntropyProto

// Credential is what this peer presents to other peers to sync an
// authority: a Biscuit token rooted at the authority's key that grants
// `sync` and names this peer's key as its device. The other peer's guard
// checks it before anything is revealed.
type Credential struct {
	AuthorityKey ed25519.PublicKey
	Token        []byte
}

// Config tunes the service. The zero value is usable: a responder that
// syncs with nobody (it holds no credential).
type Config struct {
	// FrameSizeLimit bounds one negentropy message each way; default
	// negentropy.DefaultFrameSizeLimit.
	FrameSizeLimit int
	// SketchSize is how many riblt symbols are kept per authority
	// (default riblt.DefaultSketchSize, 1.2 MB); negative turns riblt off
	// and every session reconciles with negentropy.
	SketchSize int

	// Credentials are the sync tokens this peer presents, per authority.
	// Only authorities listed here (or in CredentialsDir) are synced by
	// this peer as an initiator; it answers for every authority.
	Credentials map[events.AuthorityID]Credential
	// CredentialsDir holds one file per authority,
	// <authority public key hex>.token, with the token (base64 or raw).
	// It is read at start; see LoadCredentials.
	CredentialsDir string
	// StaticPeers are synced whether or not their presence is heard.
	StaticPeers []events.PeerID

	// SyncInterval is how often every reachable peer is synced; default
	// 30 s, negative for never (sync on connect and on demand only).
	SyncInterval time.Duration
	// PresenceInterval is how often this peer announces itself; a peer
	// not heard for three intervals is lost. Default 5 s.
	PresenceInterval time.Duration
	// SessionTimeout ends a responder session after that long without a
	// request; default 30 s.
	SessionTimeout time.Duration
	// RequestTimeout bounds one request to another peer; default 10 s.
	RequestTimeout time.Duration
	// MaxSessions bounds the responder sessions open at once (default
	// 32); MaxInitiated the sessions this peer runs at once (default 4).
	MaxSessions, MaxInitiated int
	// PeerRate and PeerBurst limit the requests one requesting device may
	// make (per second, default 200 and 400); SiteRate and SiteBurst all
	// requests together (default 2000 and 4000). The initiator takes one
	// token per session it starts from the same kind of buckets, keyed by
	// peer.
	PeerRate, PeerBurst, SiteRate, SiteBurst float64
	// BatchSize is how many facts one fetch or push carries; default 200,
	// at most MaxFetch.
	BatchSize int
	// BaseBackoff and MaxBackoff bound the wait before a failing peer is
	// tried again (doubling per failure, with jitter); default 1 s and
	// 5 min.
	BaseBackoff, MaxBackoff time.Duration
	// Rand draws the jitter, in [0, 1); default math/rand/v2. Tests
	// inject a seeded source.
	Rand func() float64

	// NoBootstrap keeps this peer from restoring an authority from a
	// peer's snapshot (snapshots.go); it then reconciles fact by fact.
	NoBootstrap bool
	// BootstrapTimeout bounds a restore from a peer's snapshot; default
	// 10 min.
	BootstrapTimeout time.Duration
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.FrameSizeLimit <= 0 {
		c.FrameSizeLimit = negentropy.DefaultFrameSizeLimit
	}
	if c.SketchSize == 0 {
		c.SketchSize = riblt.DefaultSketchSize
	}
	def(&c.SyncInterval, 30*time.Second)
	def(&c.PresenceInterval, 5*time.Second)
	def(&c.SessionTimeout, 30*time.Second)
	def(&c.RequestTimeout, 10*time.Second)
	def(&c.BaseBackoff, time.Second)
	def(&c.MaxBackoff, 5*time.Minute)
	def(&c.BootstrapTimeout, 10*time.Minute)
	for _, p := range []struct {
		v   *int
		def int
	}{{&c.MaxSessions, 32}, {&c.MaxInitiated, 4}, {&c.BatchSize, 200}} {
		if *p.v <= 0 {
			*p.v = p.def
		}
	}
	c.BatchSize = min(c.BatchSize, MaxFetch)
	for _, p := range []struct {
		v   *float64
		def float64
	}{{&c.PeerRate, 200}, {&c.PeerBurst, 400}, {&c.SiteRate, 2000}, {&c.SiteBurst, 4000}} {
		if *p.v <= 0 {
			*p.v = p.def
		}
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
}

// LoadCredentials reads a credentials directory: one file per authority,
// named <authority public key hex>.token, holding a token (base64 or raw
// bytes) rooted at that key with the `sync` right, minted for this peer's
// key (`factsync token mint --device <peer key> --right '*:sync'`).
func LoadCredentials(dir string) (map[events.AuthorityID]Credential, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("antientropy: credentials: %w", err)
	}
	creds := map[events.AuthorityID]Credential{}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".token")
		if !ok || e.IsDir() {
			continue
		}
		key, err := hex.DecodeString(name)
		if err != nil || len(key) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("antientropy: credential %s: the file name must be the authority's public key in hex", e.Name())
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("antientropy: credential: %w", err)
		}
		creds[events.AuthorityIDOf(key)] = Credential{AuthorityKey: key, Token: decodeToken(b)}
	}
	return creds, nil
}

// decodeToken accepts a token file as base64 in any common alphabet, or
// raw bytes.
func decodeToken(b []byte) []byte {
	text := strings.TrimSpace(string(b))
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if raw, err := enc.DecodeString(text); err == nil && len(raw) > 0 {
			return raw
		}
	}
	return b
}

// Service is the anti-entropy service.
type Service struct {
	cfg Config

	mu   sync.RWMutex
	sets map[events.AuthorityID]*factSet
	// rebuilding holds the indexes being read again from JOURNAL after a
	// prune (snapshots.go); new facts go into them too.
	rebuilding map[events.AuthorityID]*factSet
	// floors caches the snapshot service's floors (snapshots.go).
	floorsMu sync.Mutex
	floors   map[events.AuthorityID]cachedFloor

	// Set by Run.
	env      *service.Env
	log      *slog.Logger
	journal  jetstream.Stream
	creds    map[events.AuthorityID]Credential
	sessions *sessions
	limits   *limiter // responder: per requesting device and site-wide
	peers    *peerTable
	metrics  *metrics
	tracer   trace.Tracer
}

// factSet is one authority's facts: the reconciliation index and sketch,
// and where each fact sits in JOURNAL so fetch can read it back.
type factSet struct {
	index  negentropy.Index
	sketch *riblt.Sketch // nil when riblt is off
	mu     sync.RWMutex
	// seq is where each fact sits in JOURNAL, keyed by its id's riblt
	// prefix, since after riblt a peer asks for facts by prefix. A
	// 20-byte key also makes the map smaller (a slot is 32 bytes instead
	// of 40; a million entries measured 84 MB instead of 100); a fetch by
	// whole id reads the fact back and checks the rest of its id.
	seq map[riblt.Prefix]uint64
	// shared holds more JOURNAL sequences under a prefix that more than
	// one fact has (the first is in seq). Honest facts share a 160-bit
	// prefix with odds of about n²/2^161, and making two share one costs
	// about 2^80 hashes, so this stays empty; it exists so that such
	// facts are still found.
	shared map[riblt.Prefix][]uint64
}

var _ service.Service = (*Service)(nil)

// New returns the anti-entropy service.
func New(cfg Config) *Service {
	cfg.setDefaults()
	return &Service{cfg: cfg, sets: map[events.AuthorityID]*factSet{}, rebuilding: map[events.AuthorityID]*factSet{}, floors: map[events.AuthorityID]cachedFloor{}}
}

// Name implements service.Service.
func (s *Service) Name() string { return Name }

// Streams implements service.Service: JOURNAL is the guard's.
func (s *Service) Streams() []jetstream.StreamConfig { return nil }

// Run builds the index from JOURNAL, becomes ready once it has caught up
// with what JOURNAL held at start, then answers sessions, announces this
// peer and syncs with the others until ctx ends.
//
// The index lives in memory and is rebuilt at every start, so the service
// reads JOURNAL with an ordered consumer rather than a durable one: there
// is no position worth keeping.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	s.env, s.log, s.tracer = env, env.Log, env.Tracer
	if s.tracer == nil {
		s.tracer = tracenoop.NewTracerProvider().Tracer(Name)
	}
	creds := map[events.AuthorityID]Credential{}
	if s.cfg.CredentialsDir != "" {
		loaded, err := LoadCredentials(s.cfg.CredentialsDir)
		if err != nil {
			return err
		}
		for a, c := range loaded {
			creds[a] = c
		}
	}
	for a, c := range s.cfg.Credentials {
		creds[a] = c
	}
	s.creds = creds
	s.sessions = newSessions(env.Clock, s.cfg.MaxSessions, s.cfg.SessionTimeout)
	s.limits = newLimiter(env.Clock, s.cfg.PeerRate, s.cfg.PeerBurst, s.cfg.SiteRate, s.cfg.SiteBurst)
	var err error
	if s.metrics, err = newMetrics(env.Meter); err != nil {
		return fmt.Errorf("antientropy: metrics: %w", err)
	}

	journal, err := bus.WaitForStream(ctx, env.JS, events.StreamJournal, env.Clock, env.Log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("antientropy: %w", err)
	}
	s.journal = journal
	stop, err := s.follow(ctx, journal)
	if err != nil || stop == nil {
		return err
	}
	defer stop()
	snapshots, err := s.watchSnapshots(ctx)
	if err != nil {
		return err
	}
	defer func() {
		for _, sub := range snapshots {
			_ = sub.Unsubscribe()
		}
	}()

	s.peers = newPeerTable(s, env)
	if err := s.peers.open(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("antientropy: %w", err)
	}
	sub, err := env.Conn.QueueSubscribe(events.ServiceSubject(Name, "*", "*"), Name, s.serve(ctx))
	if err != nil {
		return fmt.Errorf("antientropy: subscribe: %w", err)
	}
	defer func() { _ = sub.Drain() }()
	env.Ready()
	return s.peers.run(ctx)
}

// follow indexes JOURNAL from the start and keeps indexing it; it returns
// once the index holds what JOURNAL held at start (stop is nil when ctx
// ended first).
func (s *Service) follow(ctx context.Context, journal jetstream.Stream) (stop func(), err error) {
	info, err := journal.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("antientropy: JOURNAL info: %w", err)
	}
	caughtUp := make(chan struct{})
	var once sync.Once
	markCaughtUp := func() { once.Do(func() { close(caughtUp) }) }
	if info.State.LastSeq == 0 {
		markCaughtUp()
	}
	cons, err := journal.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.JournalPrefix + ".>"}})
	if err != nil {
		return nil, fmt.Errorf("antientropy: JOURNAL consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		if f, err := events.DecodeFact(m.Data()); err == nil {
			s.add(f, md.Sequence.Stream)
		} else {
			s.log.Warn("antientropy: skipping a JOURNAL message that is not a fact", "seq", md.Sequence.Stream, "err", err)
		}
		if md.Sequence.Stream >= info.State.LastSeq {
			markCaughtUp()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("antientropy: consume JOURNAL: %w", err)
	}
	select {
	case <-caughtUp:
		return cc.Stop, nil
	case <-ctx.Done():
		cc.Stop()
		return nil, nil
	}
}

// add indexes one accepted fact at its JOURNAL sequence.
func (s *Service) add(f *events.Fact, seq uint64) {
	s.mu.RLock()
	next := s.rebuilding[f.Authority]
	s.mu.RUnlock()
	s.set(f.Authority, true).insert(f, seq)
	if next != nil {
		next.insert(f, seq)
	}
}

// insert indexes one fact at its JOURNAL sequence; a later copy of a fact
// moves where fetch reads it. The sequence is recorded before the lock is
// released, so a fact a session finds in the index can be fetched.
func (set *factSet) insert(f *events.Fact, seq uint64) {
	p := riblt.PrefixOf(f.ID)
	set.mu.Lock()
	isNew := set.index.Insert(negentropy.Item{Timestamp: uint64(f.HLC.Seconds()), ID: f.ID})
	switch _, known := set.seq[p]; {
	case !known:
		set.seq[p] = seq
	case !isNew && len(set.shared[p]) == 0:
		set.seq[p] = seq // a later copy of the one fact under p
	default:
		// Another fact under p, or a later copy of one of several: keep
		// every sequence, and let the read tell them apart.
		set.shared[p] = append(set.shared[p], seq)
	}
	set.mu.Unlock()
	if isNew && set.sketch != nil {
		set.sketch.Add(f.ID)
	}
}

// locate returns the JOURNAL sequences of the facts whose ids start with
// p, and possibly of older copies of them.
func (set *factSet) locate(p riblt.Prefix) []uint64 {
	set.mu.RLock()
	defer set.mu.RUnlock()
	seq, ok := set.seq[p]
	if !ok {
		return nil
	}
	return append([]uint64{seq}, set.shared[p]...)
}

// newSet returns an empty fact set.
func (s *Service) newSet() *factSet {
	set := &factSet{seq: map[riblt.Prefix]uint64{}, shared: map[riblt.Prefix][]uint64{}}
	if s.cfg.SketchSize > 0 {
		set.sketch = riblt.NewSketch(s.cfg.SketchSize)
	}
	return set
}

// set returns an authority's fact set, creating it when create is set.
func (s *Service) set(auth events.AuthorityID, create bool) *factSet {
	s.mu.RLock()
	set := s.sets[auth]
	s.mu.RUnlock()
	if set != nil || !create {
		return set
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if set = s.sets[auth]; set == nil {
		set = s.newSet()
		s.sets[auth] = set
	}
	return set
}

// Root returns the negentropy root of an authority's set: its id sum and
// count, equal on two peers exactly when their sets are (barring a hash
// collision).
func (s *Service) Root(auth events.AuthorityID) (negentropy.Accumulator, int) {
	if set := s.set(auth, false); set != nil {
		return set.index.Root()
	}
	return negentropy.Accumulator{}, 0
}

// factRef names facts to read back from JOURNAL: one by its whole id
// (after negentropy), or every fact whose id starts with a riblt prefix
// (after riblt).
type factRef struct {
	prefix riblt.Prefix
	id     events.FactID
	whole  bool
}

func idRefs(ids []events.FactID) []factRef {
	refs := make([]factRef, len(ids))
	for i, id := range ids {
		refs[i] = factRef{prefix: riblt.PrefixOf(id), id: id, whole: true}
	}
	return refs
}

func prefixRefs(ps []riblt.Prefix) []factRef {
	refs := make([]factRef, len(ps))
	for i, p := range ps {
		refs[i] = factRef{prefix: p}
	}
	return refs
}

// matches reports whether the fact with id is one r names.
func (r factRef) matches(id events.FactID) bool {
	if r.whole {
		return id == r.id
	}
	return riblt.PrefixOf(id) == r.prefix
}

func (r factRef) String() string {
	if r.whole {
		return r.id.String()
	}
	return "prefix " + r.prefix.String()
}

// readBatch is a batch of facts read back from JOURNAL for a fetch or a
// push.
type readBatch struct {
	*eventsv1.FactBatch
	// stored holds each fact with the headers it was stored with (for
	// its trace).
	stored []storedFact
	// served counts the refs, from the first, whose facts the batch
	// holds; a push goes on from the next.
	served int
	// extra counts facts beyond the first under one prefix.
	extra int
}

// batch reads facts back from JOURNAL, as many as fit in MaxBatchBytes
// and at least one, and returns them with the tokens they cite, each
// token once. A fact named by id must be here; a prefix may name none
// (riblt.Decoder.Confirm then tells the initiator its difference was
// wrong).
func (s *Service) batch(ctx context.Context, auth events.AuthorityID, refs []factRef) (*readBatch, error) {
	set := s.set(auth, false)
	out := &readBatch{FactBatch: &eventsv1.FactBatch{}, stored: make([]storedFact, 0, len(refs))}
	inBatch := map[events.FactID]bool{}
	tokens := map[string]bool{}
	size := 0
	for _, ref := range refs {
		var found []storedFact
		if set != nil {
			for _, seq := range set.locate(ref.prefix) {
				raw, err := s.journal.GetMsg(ctx, seq)
				if err != nil {
					return nil, events.Wrap(events.ReasonUnavailable, err, "read fact "+ref.String()+" from JOURNAL")
				}
				f, err := events.DecodeFact(raw.Data)
				if err != nil {
					return nil, events.Wrap(events.ReasonInternal, err, fmt.Sprintf("JOURNAL holds an undecodable fact at %d", seq))
				}
				if ref.matches(f.ID) && !inBatch[f.ID] {
					inBatch[f.ID] = true
					found = append(found, storedFact{fact: f, header: raw.Header})
				}
			}
		}
		if ref.whole && len(found) == 0 {
			return nil, events.Errorf(events.ReasonNotFound, "fact %s of authority %s is not on this peer", ref.id, auth)
		}
		added := 0
		for _, sf := range found {
			fp := sf.fact.Proto()
			size += proto.Size(fp) + batchEntryOverhead
			if len(out.Facts) > 0 && size > MaxBatchBytes {
				break
			}
			out.Facts = append(out.Facts, fp)
			out.stored = append(out.stored, sf)
			added++
			if th := sf.fact.TokenHash(); !tokens[th] {
				tokens[th] = true
				tok, err := s.journal.GetLastMsgForSubject(ctx, events.TokenSubject(auth, th))
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					return nil, events.Errorf(events.ReasonNotFound, "token %s cited by fact %s is not in JOURNAL", th, sf.fact.ID)
				}
				if err != nil {
					return nil, events.Wrap(events.ReasonUnavailable, err, "read token "+th)
				}
				out.Tokens = append(out.Tokens, tok.Data)
				size += len(tok.Data) + batchEntryOverhead
			}
		}
		if added == 0 && len(found) > 0 {
			break // full before this ref
		}
		// A ref counts as served once one of its facts is in: the rest
		// of a prefix's facts, if the batch filled up among them, are
		// left to Confirm and negentropy.
		out.served++
		out.extra += max(added-1, 0)
		if added < len(found) {
			break
		}
	}
	return out, nil
}

// batchEntryOverhead is an upper bound on the protobuf framing of one
// fact or token in a FactBatch (tag and length).
const batchEntryOverhead = 8
