// Package snapshot makes, coordinates, serves and restores verifiable
// snapshots of authorities' journals, so a new peer starts from a verified
// cut instead of replaying every fact.
//
// The pieces, in protocol order: cut.go (what a cut is and its fact-set
// fingerprint), content.go and manifest.go (the stored format and its
// verification), fence.go (one writer per authority), ledger.go and log.go
// (proposals, approvals and commits, event-sourced on SNAPSHOTS), scan.go
// (reading JOURNAL), restore.go (bootstrap), and this file, the service.
// docs/snapshot.md describes the protocol.
package snapshot

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Name is the service's name, JOURNAL durable consumer and queue group.
const Name = "snapshot"

// Asker asks one peer to approve a manifest of auth, presenting creds.
type Asker func(ctx context.Context, peer events.PeerID, auth events.AuthorityID, manifest []byte, creds Credentials) (events.SnapshotSignature, error)

// Config tunes the snapshot service. The zero value is usable.
type Config struct {
	// Policies are per-authority approval policies; others get Default.
	Policies map[events.AuthorityID]Policy
	Default  Policy
	// Approvers are the peers asked to approve every snapshot this peer
	// proposes.
	Approvers []events.PeerID
	// Ask reaches an approver; default: through the approver's guard
	// (PeerSource.Approve) with the credentials of the request that
	// triggered the snapshot, or Credentials for timed triggers.
	Ask Asker
	// Credentials, per authority, for the approval requests of snapshots
	// that the triggers (not a client) start.
	Credentials map[events.AuthorityID]Credentials
	// EveryFacts triggers a snapshot of an authority after that many new
	// facts (default 100000); EveryTime after that long with new facts
	// (default 24h). Negative disables the trigger.
	EveryFacts int
	EveryTime  time.Duration
	// Tick is how often triggers are checked; default 1s.
	Tick time.Duration
	// Settle is how far behind the clock an automatic cut is, so facts
	// still in flight to peers fall after it; default 1 minute.
	Settle time.Duration
	// Lease is the lease of the writer fences and of the active replica;
	// default DefaultLease.
	Lease time.Duration
	// Keep is how many committed snapshots' contents are kept per
	// authority; older contents are deleted (their events stay). Default 2.
	Keep int
	// SettleTimeout bounds a restore's wait for the guard; default 2m.
	SettleTimeout time.Duration
	// Retention is per-authority retention; others get DefaultRetention.
	Retention        map[events.AuthorityID]Retention
	DefaultRetention Retention
	// PruneTimeout bounds the guard's work on one prune; default 10m.
	PruneTimeout time.Duration

	// afterBuild is a test hook between building a snapshot and writing
	// it; the fence test pauses a writer there.
	afterBuild func(events.AuthorityID)
	// whileBuilding is a test hook in Create, while the fence is kept
	// for the build.
	whileBuilding func(events.AuthorityID)
	// beforePruneAsk is a test hook between recording a prune as pending
	// and asking the guard to carry it out.
	beforePruneAsk func(events.AuthorityID)
}

func (c Config) withDefaults() Config {
	if c.EveryFacts == 0 {
		c.EveryFacts = 100000
	}
	if c.EveryTime == 0 {
		c.EveryTime = 24 * time.Hour
	}
	if c.Tick <= 0 {
		c.Tick = time.Second
	}
	if c.Settle <= 0 {
		c.Settle = time.Minute
	}
	if c.Keep <= 0 {
		c.Keep = 2
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.PruneTimeout <= 0 {
		c.PruneTimeout = defaultPruneTimeout
	}
	return c
}

// Service is the snapshot service.
type Service struct {
	cfg Config

	mu      sync.Mutex
	env     *service.Env
	log     *eventLog
	objects jetstream.ObjectStore
	pruned  jetstream.KeyValue // PrunedBucket
	fence   *Fence
	restore *Restorer
	auths   map[events.AuthorityID]*authState
	// restoring holds the authorities with a restore in flight.
	restoring map[events.AuthorityID]bool
	cached    struct {
		id   string
		data []byte
	}
	ready chan struct{}
	// background counts restores started by requests; Run waits for them.
	background sync.WaitGroup
	// active is set while this replica holds the writer lease (active.go).
	active atomic.Bool
}

// authState is what the triggers need about one authority.
type authState struct {
	key      ed25519.PublicKey
	pending  int       // facts since the last snapshot this peer made
	lastMade time.Time // when this peer last made one
}

var _ service.Service = (*Service)(nil)

// New returns a snapshot service.
func New(cfg Config) *Service {
	return &Service{cfg: cfg.withDefaults(), auths: map[events.AuthorityID]*authState{}, restoring: map[events.AuthorityID]bool{}, ready: make(chan struct{})}
}

// Name is "snapshot".
func (s *Service) Name() string { return Name }

// Streams is SNAPSHOTS.
func (s *Service) Streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{events.SnapshotsStream()}
}

// ObjectBucket is the object store of snapshot contents.
func ObjectBucket() jetstream.ObjectStoreConfig {
	return jetstream.ObjectStoreConfig{
		Bucket:      events.SnapshotObjectBucket,
		Description: "snapshot contents, named by snapshot id",
		Storage:     jetstream.FileStorage,
	}
}

// Policy returns the approval policy of auth.
func (s *Service) Policy(auth events.AuthorityID) Policy {
	if p, ok := s.cfg.Policies[auth]; ok {
		return p
	}
	return s.cfg.Default
}

// retention returns the retention policy of auth.
func (s *Service) retention(auth events.AuthorityID) Retention {
	if r, ok := s.cfg.Retention[auth]; ok {
		return r
	}
	return s.cfg.DefaultRetention
}

// Run serves until ctx ends.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	if env.Clock == nil {
		env.Clock = clock.Real{}
	}
	if env.Log == nil {
		env.Log = slog.Default()
	}
	if len(env.PeerKey) != ed25519.PrivateKeySize {
		return errors.New("snapshot: the service needs the peer key to sign manifests")
	}
	if err := bus.Provision(ctx, env.JS, s.Streams()...); err != nil {
		return err
	}
	objects, err := bus.ProvisionObjectStore(ctx, env.JS, ObjectBucket())
	if err != nil {
		return err
	}
	kvs, err := bus.ProvisionKV(ctx, env.JS, FenceBucket(), RestoreBucket(), WriterBucket(), PrunedBucket())
	if err != nil {
		return err
	}
	evlog, err := openLog(ctx, env.JS, NewLedger(s.Policy), env.Log)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.env, s.log, s.objects, s.pruned = env, evlog, objects[0], kvs[3]
	s.fence = NewFence(kvs[0], env.Clock, s.cfg.Lease, env.Peer)
	s.restore = &Restorer{JS: env.JS, Markers: kvs[1], Clock: env.Clock, Policy: s.Policy, Settled: s.settledCut, Loaded: s.recordRestore, CheckSignatures: s.guardVerify, SettleTimeout: s.cfg.SettleTimeout}
	s.mu.Unlock()

	journal, err := env.JS.CreateOrUpdateConsumer(ctx, events.StreamJournal, jetstream.ConsumerConfig{
		Durable:       Name,
		Description:   "counts each authority's new facts for the snapshot triggers",
		AckPolicy:     jetstream.AckNonePolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		FilterSubject: events.JournalPrefix + ".>",
	})
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "snapshot: JOURNAL consumer")
	}
	if env.Meter != nil {
		reg, err := s.observeAge(env.Meter)
		if err != nil {
			return err
		}
		defer func() { _ = reg.Unregister() }()
	}

	var wg sync.WaitGroup
	defer s.background.Wait()
	defer wg.Wait()
	requests, err := env.Conn.QueueSubscribe(events.ServiceSubject(Name, "*", "*"), Name, func(m *nats.Msg) {
		wg.Go(func() { s.serve(ctx, m) })
	})
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "subscribe to snapshot requests")
	}
	defer func() { _ = requests.Unsubscribe() }()
	if err := env.Conn.FlushTimeout(10 * time.Second); err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "register snapshot subscriptions")
	}
	close(s.ready)
	if env.Ready != nil {
		env.Ready()
	}
	return s.campaign(ctx, kvs[2], journal)
}

// count notes one new fact of its authority for the triggers. The
// authority comes from the subject; only an authority's first fact is
// decoded, for its key.
func (s *Service) count(m jetstream.Msg) {
	addr, err := events.ParseJournalSubject(m.Subject())
	if err != nil {
		return
	}
	s.mu.Lock()
	if st := s.auths[addr.Authority]; st != nil {
		st.pending++
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	f, err := events.DecodeFact(m.Data())
	if err != nil || f.Authority != addr.Authority {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.auths[addr.Authority]
	if st == nil {
		st = &authState{key: f.AuthorityKey(), lastMade: s.env.Clock.Now()}
		s.auths[addr.Authority] = st
	}
	st.pending++
}

// trigger makes a snapshot of every authority whose fact count or age
// calls for one.
func (s *Service) trigger(ctx context.Context) {
	now := s.env.Clock.Now()
	var due []events.AuthorityID
	s.mu.Lock()
	for auth, st := range s.auths {
		byCount := s.cfg.EveryFacts > 0 && st.pending >= s.cfg.EveryFacts
		byTime := s.cfg.EveryTime > 0 && st.pending > 0 && now.Sub(st.lastMade) >= s.cfg.EveryTime
		if byCount || byTime {
			due = append(due, auth)
		}
	}
	s.mu.Unlock()
	for _, auth := range due {
		creds := s.cfg.Credentials[auth]
		if _, err := s.Create(ctx, auth, 0, creds); err != nil && ctx.Err() == nil {
			s.env.Log.Warn("snapshot: triggered snapshot failed", "authority", auth, "err", err)
		}
	}
}

// buildFenced builds the snapshot of auth at cut while keeping the fence
// l, however long the build takes.
func (s *Service) buildFenced(ctx context.Context, auth events.AuthorityID, cut uint32, l *Lease) (*Built, error) {
	stop := s.keepFence(ctx, l)
	if s.cfg.whileBuilding != nil {
		s.cfg.whileBuilding(auth)
	}
	b, _, _, err := s.build(ctx, auth, cut, nil)
	var built *Built
	if err == nil {
		built, err = b.Build()
	}
	if lost := stop(); err == nil && lost != nil {
		err = lost
	}
	return built, err
}

// Create makes a snapshot of auth at cut (0: the clock less Settle) under
// the writer fence, proposes it, asks the approvers, and commits it once
// the threshold signed. It returns the snapshot as recorded.
func (s *Service) Create(ctx context.Context, auth events.AuthorityID, cut uint32, creds Credentials) (events.SnapshotInfo, error) {
	<-s.ready
	env := s.env
	now := env.Clock.Now()
	if cut == 0 {
		cut = uint32(now.Add(-s.cfg.Settle).Unix())
	}
	if int64(cut) > now.Unix() {
		return events.SnapshotInfo{}, events.Errorf(events.ReasonMalformed, "cut %d is after this peer's clock (%d): facts before it may still be written", cut, now.Unix())
	}
	lease, err := s.fence.Acquire(ctx, auth)
	if err != nil {
		return events.SnapshotInfo{}, err
	}
	// Released with the token as last renewed: a stale one frees nothing.
	defer func() { s.fence.Release(context.WithoutCancel(ctx), lease) }()
	s.mu.Lock()
	pendingAtStart := 0
	if st := s.auths[auth]; st != nil {
		pendingAtStart = st.pending
	}
	s.mu.Unlock()

	built, err := s.buildFenced(ctx, auth, cut, &lease)
	if err != nil {
		return events.SnapshotInfo{}, err
	}
	manifest := built.Stamp(env.PeerKey.Public().(ed25519.PublicKey), now, lease.Token)
	id := ManifestID(manifest)
	if _, err := s.objects.PutBytes(ctx, id, built.Content); err != nil {
		return events.SnapshotInfo{}, events.Wrap(events.ReasonUnavailable, err, "store the snapshot content")
	}
	if s.cfg.afterBuild != nil {
		s.cfg.afterBuild(auth)
	}
	// The fenced write: renew from our token, then append. A writer that
	// lost the fence while paused stops here; one paused between renewal
	// and append is refused by the ledger's fencing-token check.
	if err := s.fence.Renew(ctx, &lease); err != nil {
		return events.SnapshotInfo{}, err
	}
	if err := s.log.append(ctx, auth, events.SnapshotEvent{Kind: events.SnapshotProposed, At: now, ID: id, Manifest: manifest, Signature: Sign(env.PeerKey, manifest)}, nil); err != nil {
		return events.SnapshotInfo{}, err
	}
	s.gatherApprovals(ctx, auth, id, manifest, creds)
	if err := s.commitIfReady(ctx, auth, id, &lease); err != nil {
		return events.SnapshotInfo{}, err
	}
	s.mu.Lock()
	if st := s.auths[auth]; st != nil {
		st.pending -= min(pendingAtStart, st.pending)
		st.lastMade = now
	}
	s.mu.Unlock()
	s.dropOldContents(ctx, auth)
	var info events.SnapshotInfo
	if err := s.log.read(ctx, func(l *Ledger) { info, _ = l.Get(id) }); err != nil {
		return info, err
	}
	if info.Committed && s.retention(auth).PruneJournal {
		if _, err := s.pruneFenced(ctx, auth, creds); err != nil && ctx.Err() == nil {
			s.env.Log.Warn("snapshot: prune after commit failed; the history stays", "authority", auth, "snapshot", shortID(id), "err", err)
		}
	}
	return info, nil
}

// gatherApprovals asks every approver, in parallel, and records each valid
// approval. Refusals are logged: a peer whose journal differs at the cut
// must refuse.
func (s *Service) gatherApprovals(ctx context.Context, auth events.AuthorityID, id string, manifest []byte, creds Credentials) {
	ask := s.cfg.Ask
	if ask == nil {
		ask = func(ctx context.Context, peer events.PeerID, auth events.AuthorityID, manifest []byte, creds Credentials) (events.SnapshotSignature, error) {
			return PeerSource{Conn: s.env.Conn, Peer: peer, Credentials: creds}.Approve(ctx, auth, manifest)
		}
	}
	var wg sync.WaitGroup
	for _, peer := range s.cfg.Approvers {
		if peer == s.env.Peer {
			continue
		}
		wg.Go(func() {
			sig, err := ask(ctx, peer, auth, manifest, creds)
			if err == nil {
				err = s.log.append(ctx, auth, events.SnapshotEvent{Kind: events.SnapshotApproved, At: s.env.Clock.Now(), ID: id, Signature: sig}, nil)
			}
			if err != nil {
				s.env.Log.Warn("snapshot: approval not counted", "snapshot", shortID(id), "peer", peer, "err", err)
			}
		})
	}
	wg.Wait()
}

// commitIfReady commits id once it has its threshold, under the fence.
// Below the threshold it leaves the proposal open: approvals that arrive
// later (the approve request's record) can still commit it.
func (s *Service) commitIfReady(ctx context.Context, auth events.AuthorityID, id string, lease *Lease) error {
	ready := false
	if err := s.log.read(ctx, func(l *Ledger) { ready = l.Ready(id) }); err != nil || !ready {
		return err
	}
	if lease != nil {
		if err := s.fence.Renew(ctx, lease); err != nil {
			return err
		}
	}
	return s.log.append(ctx, auth, events.SnapshotEvent{Kind: events.SnapshotCommitted, At: s.env.Clock.Now(), ID: id}, nil)
}

// Approve checks a manifest proposed by another peer against this peer's
// own journal, and signs it if the cut's fingerprint and count, the
// documents and the content it would build are all the same.
func (s *Service) Approve(ctx context.Context, manifest []byte) (events.SnapshotSignature, error) {
	<-s.ready
	m, err := DecodeManifest(manifest)
	if err != nil {
		return events.SnapshotSignature{}, err
	}
	b, _, _, err := s.build(ctx, m.Authority(), m.Cut, nil)
	if err != nil {
		return events.SnapshotSignature{}, err
	}
	mine, err := b.Build()
	if err != nil {
		return events.SnapshotSignature{}, err
	}
	switch own := mine.Manifest; {
	case own.Summary != m.Summary:
		return events.SnapshotSignature{}, events.Errorf(events.ReasonConflict, "this peer's facts before cut %d differ: fingerprint %s over %d facts, the proposal says %s over %d",
			m.Cut, own.Summary.Hex(), own.Summary.Count, m.Summary.Hex(), m.Summary.Count)
	case own.StateDigest != m.StateDigest || own.Documents != m.Documents:
		return events.SnapshotSignature{}, events.Errorf(events.ReasonConflict, "this peer's documents at cut %d differ from the proposal's", m.Cut)
	case own.ContentHash != m.ContentHash:
		return events.SnapshotSignature{}, events.Errorf(events.ReasonConflict, "this peer builds different snapshot content at cut %d", m.Cut)
	}
	return Sign(s.env.PeerKey, manifest), nil
}

// dropOldContents deletes the contents of auth's committed snapshots
// beyond the newest Keep, and of proposals older than the newest commit
// that never committed.
func (s *Service) dropOldContents(ctx context.Context, auth events.AuthorityID) {
	var list []events.SnapshotInfo
	if err := s.log.read(ctx, func(l *Ledger) { list = l.List(auth, false) }); err != nil {
		return
	}
	kept, newestCut := 0, uint32(0)
	for _, info := range list {
		if info.Committed {
			kept++
			newestCut = max(newestCut, info.CutSeconds)
			if kept <= s.cfg.Keep {
				continue
			}
		} else if kept == 0 || info.CutSeconds >= newestCut {
			continue
		}
		if err := s.objects.Delete(ctx, info.ID); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			s.env.Log.Warn("snapshot: prune content", "snapshot", shortID(info.ID), "err", err)
		}
	}
}

// List returns auth's snapshots, newest first.
func (s *Service) List(ctx context.Context, auth events.AuthorityID, committedOnly bool) ([]events.SnapshotInfo, error) {
	<-s.ready
	var list []events.SnapshotInfo
	err := s.log.read(ctx, func(l *Ledger) { list = l.List(auth, committedOnly) })
	return list, err
}

// Fetch reads a chunk of a snapshot's content.
func (s *Service) Fetch(ctx context.Context, auth events.AuthorityID, req events.SnapshotFetchRequest) (events.SnapshotFetchReply, error) {
	<-s.ready
	var info events.SnapshotInfo
	var ok bool
	if err := s.log.read(ctx, func(l *Ledger) { info, ok = l.Get(req.ID) }); err != nil {
		return events.SnapshotFetchReply{}, err
	}
	if !ok || info.Authority != auth {
		return events.SnapshotFetchReply{}, events.Errorf(events.ReasonNotFound, "no snapshot %s of authority %s", shortID(req.ID), auth)
	}
	content, err := s.content(ctx, req.ID)
	if err != nil {
		return events.SnapshotFetchReply{}, err
	}
	size := int64(len(content))
	if req.Offset < 0 || req.Offset > size {
		return events.SnapshotFetchReply{}, events.Errorf(events.ReasonMalformed, "offset %d is outside the snapshot's %d bytes", req.Offset, size)
	}
	limit := req.Limit
	if limit <= 0 || limit > fetchChunk {
		limit = fetchChunk
	}
	data := content[req.Offset:min(req.Offset+limit, size)]
	return events.SnapshotFetchReply{Data: data, Size: size}, nil
}

// content reads a snapshot's content, keeping the last one read: a
// restore fetches one snapshot chunk by chunk.
func (s *Service) content(ctx context.Context, id string) ([]byte, error) {
	s.mu.Lock()
	if s.cached.id == id {
		defer s.mu.Unlock()
		return s.cached.data, nil
	}
	s.mu.Unlock()
	data, err := s.objects.GetBytes(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, events.Errorf(events.ReasonNotFound, "the content of snapshot %s was pruned", shortID(id))
	}
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "read the snapshot content")
	}
	s.mu.Lock()
	s.cached.id, s.cached.data = id, data
	s.mu.Unlock()
	return data, nil
}

// StartRestore bootstraps auth from src in the background, one restore per
// authority at a time, reporting progress on the bus and to inbox.
func (s *Service) StartRestore(ctx context.Context, auth events.AuthorityID, src Source, inbox string) error {
	<-s.ready
	s.mu.Lock()
	if s.restoring[auth] {
		s.mu.Unlock()
		return events.Errorf(events.ReasonConflict, "a restore of authority %s is running already", auth)
	}
	s.restoring[auth] = true
	s.mu.Unlock()
	r := *s.restore
	r.Progress = func(p events.SnapshotProgress) { s.progress(p, inbox) }
	s.background.Go(func() {
		defer func() {
			s.mu.Lock()
			delete(s.restoring, auth)
			s.mu.Unlock()
		}()
		if _, err := r.Restore(ctx, src, auth); err != nil {
			s.env.Log.Warn("snapshot: restore failed", "authority", auth, "err", err)
			s.progress(events.SnapshotProgress{Authority: auth, Phase: events.SnapshotPhaseFailed, Reason: events.ReasonOf(err), Detail: err.Error()}, inbox)
		}
	})
	return nil
}

// Restore runs a restore of auth from src and waits for it.
func (s *Service) Restore(ctx context.Context, auth events.AuthorityID, src Source) (*Verified, error) {
	<-s.ready
	r := *s.restore
	r.Progress = func(p events.SnapshotProgress) { s.progress(p, "") }
	return r.Restore(ctx, src, auth)
}

// progress publishes a restore report on the bus, and to inbox when set.
func (s *Service) progress(p events.SnapshotProgress, inbox string) {
	b, err := events.EncodeSnapshotProgress(p)
	if err != nil {
		s.env.Log.Error("snapshot: restore progress does not encode", "err", err)
		return
	}
	_ = s.env.Conn.Publish(events.SnapshotProgressSubject(p.Authority), b)
	if inbox != "" {
		_ = s.env.Conn.Publish(inbox, b)
	}
}

// serve answers one request on fs.svc.snapshot.<op>.<auth>. The guard has
// checked the `snapshot` right on the authority.
func (s *Service) serve(ctx context.Context, m *nats.Msg) {
	ctx = bus.ExtractTrace(ctx, m.Header)
	reply, err := s.handle(ctx, m)
	_ = bus.Respond(m, reply, err)
}

func (s *Service) handle(ctx context.Context, m *nats.Msg) (any, error) {
	addr, err := events.ParseAPISubject(events.ServicePrefix, m.Subject)
	if err != nil {
		return nil, err
	}
	auth := addr.Authority
	switch addr.Op {
	case events.SnapshotOpCreate:
		var req events.SnapshotCreateRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		creds, err := callerCredentials(m.Header, auth)
		if err != nil {
			return nil, err
		}
		return s.Create(ctx, auth, req.CutSeconds, creds)
	case events.SnapshotOpList:
		var req events.SnapshotListRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		list, err := s.List(ctx, auth, req.CommittedOnly)
		return events.SnapshotListReply{Snapshots: list}, err
	case events.SnapshotOpFetch:
		var req events.SnapshotFetchRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		return s.Fetch(ctx, auth, req)
	case events.SnapshotOpApprove:
		var req events.SnapshotApproveRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		if man, err := DecodeManifest(req.Manifest); err == nil && man.Authority() != auth {
			return nil, events.Errorf(events.ReasonMalformed, "manifest of authority %s sent as a request about %s", man.Authority(), auth)
		}
		sig, err := s.Approve(ctx, req.Manifest)
		return events.SnapshotApproveReply{Signature: sig}, err
	case events.SnapshotOpPrune:
		var req events.SnapshotPruneRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		creds, err := callerCredentials(m.Header, auth)
		if err != nil {
			return nil, err
		}
		return s.Prune(ctx, auth, creds)
	case events.SnapshotOpFloor:
		var req events.SnapshotFloorRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		return s.Floor(ctx, auth)
	case events.SnapshotOpRestore:
		var req events.SnapshotRestoreRequest
		if err := decode(m, &req); err != nil {
			return nil, err
		}
		if err := req.From.Validate(); err != nil {
			return nil, err
		}
		if req.ProgressInbox != "" {
			if err := events.CheckReplySubject(req.ProgressInbox); err != nil {
				return nil, err
			}
		}
		creds, err := callerCredentials(m.Header, auth)
		if err != nil {
			return nil, err
		}
		src := PeerSource{Conn: s.env.Conn, Peer: req.From, Credentials: creds}
		if err := s.StartRestore(ctx, auth, src, req.ProgressInbox); err != nil {
			return nil, err
		}
		return events.SnapshotProgress{Authority: auth, Phase: events.SnapshotPhaseFetching}, nil
	}
	return nil, events.Errorf(events.ReasonNotFound, "the snapshot service has no operation %q", addr.Op)
}

// callerCredentials are the token and authority key the guard checked on
// this request; the service presents them to other peers on the caller's
// behalf.
func callerCredentials(h nats.Header, auth events.AuthorityID) (Credentials, error) {
	token, err := base64.StdEncoding.DecodeString(h.Get(events.HeaderToken))
	key, kerr := hex.DecodeString(h.Get(events.HeaderAuthorityKey))
	if err != nil || kerr != nil || len(key) != ed25519.PublicKeySize || events.AuthorityIDOf(key) != auth {
		return Credentials{}, events.Errorf(events.ReasonBadToken, "request lacks the token and authority key the guard checked")
	}
	return Credentials{Token: token, AuthorityKey: key}, nil
}

// decode reads a JSON request body, refusing unknown fields.
func decode(m *nats.Msg, v any) error {
	dec := json.NewDecoder(bytes.NewReader(m.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return events.Wrap(events.ReasonMalformed, err, "request body does not decode")
	}
	return nil
}
