package ota

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Name is the service's name.
const Name = "ota"

// Config configures the ota service of one peer.
type Config struct {
	// Authority is the deployment's release authority: the service
	// answers fs.svc.ota.<op>.<Authority>, which the guard forwards after
	// checking a token rooted at it.
	Authority events.AuthorityID
	// Root is the trust anchor: the deployment's first root policy,
	// signed by a threshold of its own root keys. Rotations recorded on
	// the OTA stream lead on from it.
	Root events.OTASignedRoot
	// Stage makes this peer fetch, verify and stage every approved
	// release into StageDir and report its readiness, signed with the
	// peer key. Peers that stage out of band (`factsync ota ready`) leave
	// it off.
	Stage bool
	// StageDir is where releases are staged; default <DataDir>/staged.
	StageDir string
	// Tick is how often the service checks activation times and
	// deadlines and catches up with other replicas (a follower: copies
	// the coordinator's log); default 1s.
	Tick time.Duration

	// Coordinator is the peer whose OTA stream is the ceremony's log.
	// Empty, or this peer's own id, makes this peer the coordinator: it
	// decides and writes every event. Any other peer is a follower: it
	// copies the coordinator's log into its own OTA stream, judging each
	// message with its own ledger, and sends its writes to the
	// coordinator across the mesh (docs/ota.md, "Across the mesh").
	Coordinator events.PeerID
	// Credential is what this peer presents to other peers' guards: a
	// token granting sync on the release authority, minted for this
	// peer's key. A follower needs it to copy the log and fetch
	// artifacts; a coordinator to tell followers its log has grown.
	Credential Credential
	// RequestTimeout bounds each request to another peer; default 15s. A
	// request lost on a link coming back up costs a follower this long
	// before it tries again.
	RequestTimeout time.Duration
}

// Credential is a token and the public key of the authority it is rooted
// at, which a peer's guard checks it against.
type Credential struct {
	AuthorityKey ed25519.PublicKey
	Token        []byte
}

// Service is the ota service. Several replicas may share one OTA stream:
// every write names the stream sequence it was decided at, so replicas
// take turns and never fork the history.
type Service struct {
	cfg Config

	// mu guards the fields below and serialises writes to the stream.
	mu      sync.Mutex
	env     *service.Env
	ledger  Ledger
	applied uint64 // the last stream sequence folded into ledger
	stream  jetstream.Stream
	objects jetstream.ObjectStore

	// reported holds the proposals this peer has staged and reported on,
	// so it does not stage them again. Only the Run loop uses it.
	reported map[string]bool
	// nudge wakes the Run loop before its next tick: a write to the OTA
	// stream, or a coordinator's head notice.
	nudge   chan struct{}
	metrics *metrics
}

var _ service.Service = (*Service)(nil)

// New returns an ota service; Run checks the config.
func New(cfg Config) *Service {
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = requestTimeout
	}
	return &Service{cfg: cfg, reported: map[string]bool{}, nudge: make(chan struct{}, 1)}
}

// Name is "ota".
func (s *Service) Name() string { return Name }

// Streams is the OTA stream.
func (s *Service) Streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{events.OTAStream()}
}

// ArtifactStore is the object store of artifacts.
func ArtifactStore() jetstream.ObjectStoreConfig {
	return jetstream.ObjectStoreConfig{
		Bucket:      events.OTAArtifactBucket,
		Description: "artifacts of proposed releases, named by proposal id",
		Storage:     jetstream.FileStorage,
	}
}

// Run serves until ctx ends.
func (s *Service) Run(ctx context.Context, env *service.Env) error {
	if err := s.cfg.Authority.Validate(); err != nil {
		return fmt.Errorf("ota: config: release authority: %w", err)
	}
	anchor, err := TrustRoot(s.cfg.Root)
	if err != nil {
		return fmt.Errorf("ota: config: root policy: %w", err)
	}
	if s.cfg.Stage && s.cfg.StageDir == "" {
		s.cfg.StageDir = filepath.Join(env.DataDir, "staged")
	}
	if err := bus.Provision(ctx, env.JS, s.Streams()...); err != nil {
		return err
	}
	objects, err := bus.ProvisionObjectStore(ctx, env.JS, ArtifactStore())
	if err != nil {
		return err
	}
	stream, err := env.JS.Stream(ctx, events.StreamOTA)
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "open the OTA stream")
	}

	m, err := newMetrics(env.Meter)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.env, s.stream, s.objects, s.metrics = env, stream, objects[0], m
	s.ledger = NewLedger(anchor)
	err = s.catchUpLocked(ctx)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	reg, err := s.observe()
	if err != nil {
		return err
	}
	defer func() { _ = reg.Unregister() }()

	// Any write to the OTA stream, by this replica or another, nudges
	// the loop to catch up at once rather than at the next tick. The
	// nudge comes from a stream consumer, not a core subscription: a
	// core subscriber can hear a message before the stream has stored
	// it, and would then catch up to just short of it.
	watcher, err := env.JS.OrderedConsumer(ctx, events.StreamOTA, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "watch the OTA stream")
	}
	watch, err := watcher.Consume(func(jetstream.Msg) { s.wake() })
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "watch the OTA stream")
	}
	defer watch.Stop()
	requests, err := env.Conn.QueueSubscribe(events.ServiceSubject(Name, "*", s.cfg.Authority), Name, func(m *nats.Msg) {
		s.serve(ctx, m)
	})
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "subscribe to OTA requests")
	}
	defer requests.Drain()
	// Ready means requests reach us: the server must have the
	// subscriptions before anyone is told so.
	if err := env.Conn.FlushTimeout(requestTimeout); err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "register OTA subscriptions")
	}

	ticker := env.Clock.NewTicker(s.cfg.Tick)
	defer ticker.Stop()
	if env.Ready != nil {
		env.Ready()
	}
	for {
		s.step(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-s.nudge:
		case <-ticker.C():
		}
	}
}

// wake nudges the Run loop; a nudge already pending covers this one.
func (s *Service) wake() {
	select {
	case s.nudge <- struct{}{}:
	default:
	}
}

// step does what time and other replicas' writes have made due. The
// coordinator writes due activations and aborts and announces a newly
// active protocol; a follower copies the coordinator's log instead. Both
// stage approved releases for this peer.
func (s *Service) step(ctx context.Context) {
	s.mu.Lock()
	err := s.catchUpLocked(ctx)
	l := s.ledger
	s.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			s.env.Log.Warn("ota: catch up with the OTA stream", "err", err)
		}
		return
	}
	if s.follower() {
		if err := s.copyLog(ctx); err != nil && ctx.Err() == nil {
			s.env.Log.Warn("ota: copy the coordinator's OTA log", "coordinator", s.cfg.Coordinator, "err", err)
		}
		if s.cfg.Stage {
			s.stageApproved(ctx)
		}
		return
	}
	for _, ev := range l.Due(s.env.Clock.Now()) {
		if _, err := s.commit(ctx, ev); err != nil && !events.IsReason(err, events.ReasonConflict) {
			s.env.Log.Warn("ota: write a due event", "kind", ev.Kind, "proposal", ev.Proposal, "err", err)
		}
	}
	if err := s.announce(ctx); err != nil {
		s.env.Log.Warn("ota: announce the active protocol version", "err", err)
	}
	if s.cfg.Stage {
		s.stageApproved(ctx)
	}
}

// Ledger returns the ceremony state as of the last event folded.
func (s *Service) Ledger() Ledger {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ledger
}

// Replay folds the whole OTA stream into a ledger that starts from anchor:
// the state a fresh replica rebuilds. It returns the last sequence folded.
func Replay(ctx context.Context, js jetstream.JetStream, anchor *Policy) (Ledger, uint64, error) {
	stream, err := js.Stream(ctx, events.StreamOTA)
	if err != nil {
		return Ledger{}, 0, events.Wrap(events.ReasonUnavailable, err, "open the OTA stream")
	}
	return fold(ctx, stream, NewLedger(anchor), 0, nil, nil)
}

// fold applies the stream's messages after sequence after to l. A message
// the ledger refuses is skipped (and logged when log is set): writers
// check every event before writing it, so none should be there, and every
// replica skips it alike. applied, when set, sees each step.
func fold(ctx context.Context, stream jetstream.Stream, l Ledger, after uint64, log func(seq uint64, err error), applied func(prev, next Ledger)) (Ledger, uint64, error) {
	info, err := stream.Info(ctx)
	if err != nil {
		return l, after, events.Wrap(events.ReasonUnavailable, err, "read the OTA stream's state")
	}
	for seq := after + 1; seq <= info.State.LastSeq; seq++ {
		msg, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return l, seq - 1, events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("read OTA event %d", seq))
		}
		next, err := l.ApplyMessage(msg.Subject, msg.Data)
		if err != nil {
			if log != nil {
				log(seq, err)
			}
			continue
		}
		if applied != nil {
			applied(l, next)
		}
		l = next
	}
	return l, info.State.LastSeq, nil
}

// catchUpLocked folds what other replicas wrote. s.mu must be held.
func (s *Service) catchUpLocked(ctx context.Context) error {
	l, seq, err := fold(ctx, s.stream, s.ledger, s.applied, func(seq uint64, err error) {
		s.env.Log.Error("ota: skipping an OTA event the ledger refuses", "seq", seq, "err", err)
	}, func(prev, next Ledger) { s.metrics.transitions(ctx, prev, next) })
	s.ledger, s.applied = l, seq
	return err
}

// advanceLocked makes l, one event on from the ledger, the ledger as of
// stream sequence seq, and counts the ceremony's move. s.mu must be held.
func (s *Service) advanceLocked(ctx context.Context, l Ledger, seq uint64) {
	s.metrics.transitions(ctx, s.ledger, l)
	s.ledger, s.applied = l, seq
}

// maxWriteAttempts bounds how often a write retries after losing the race
// for the next sequence to another replica.
const maxWriteAttempts = 8

// write appends one message to the OTA stream if change accepts it against
// the latest ledger. It expects the stream's last sequence to be the one
// the ledger has folded, so a write decided on a stale ledger is refused
// by the server; it then catches up and decides again.
func (s *Service) write(ctx context.Context, subject string, data []byte, change func(Ledger) (Ledger, error)) (Ledger, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.follower() {
		// A follower's stream is a copy of the coordinator's log; a
		// write of its own would fork it.
		return s.ledger, events.Errorf(events.ReasonInternal, "a follower of coordinator %s never writes its OTA stream itself", s.cfg.Coordinator)
	}
	for range maxWriteAttempts {
		if err := s.catchUpLocked(ctx); err != nil {
			return s.ledger, err
		}
		next, err := change(s.ledger)
		if err != nil {
			return s.ledger, err
		}
		ack, err := s.env.JS.Publish(ctx, subject, data, jetstream.WithExpectLastSequence(s.applied))
		if isWrongLastSequence(err) {
			continue
		}
		if err != nil {
			return s.ledger, events.Wrap(events.ReasonUnavailable, err, "write to the OTA stream")
		}
		s.advanceLocked(ctx, next, ack.Sequence)
		s.announceHead(ack.Sequence)
		return next, nil
	}
	return s.ledger, events.Errorf(events.ReasonUnavailable, "the OTA stream kept moving under %d attempts to write; retry", maxWriteAttempts)
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// commit writes an OTA event that the ledger accepts.
func (s *Service) commit(ctx context.Context, ev events.OTAEvent) (Ledger, error) {
	data, err := events.EncodeOTAEvent(ev)
	if err != nil {
		return Ledger{}, err
	}
	return s.write(ctx, eventSubject(ev), data, func(l Ledger) (Ledger, error) { return l.Apply(ev) })
}

// announce publishes the protocol version a hard fork put in force, once.
// Only an activation, which Admit gates as category C, changes
// Ledger.Active, and Announce accepts nothing else.
func (s *Service) announce(ctx context.Context) error {
	l := s.Ledger()
	if l.Announced >= l.Active.Protocol {
		return nil
	}
	data, err := events.EncodeActiveVersion(l.Active)
	if err != nil {
		return err
	}
	active := l.Active
	_, err = s.write(ctx, events.OTAActiveSubject, data, func(l Ledger) (Ledger, error) {
		if l.Announced >= l.Active.Protocol {
			return l, events.Errorf(events.ReasonConflict, "protocol %d is announced already", l.Announced)
		}
		return l.Announce(active)
	})
	if events.IsReason(err, events.ReasonConflict) {
		return nil // another replica announced it first
	}
	return err
}

// peerID is this peer's id in readiness reports.
func (s *Service) peerID() string {
	return events.KeyID(s.env.PeerKey.Public().(ed25519.PublicKey))
}
