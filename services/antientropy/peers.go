package antientropy

import (
	"cmp"
	"context"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go/jetstream"
)

// Presence is the heartbeat a peer publishes on
// events.PresenceSubject(peer), core NATS across the mesh. Each peer
// records what it hears in its own events.PresenceBucket, with a TTL of
// three of the sender's intervals (discovery.go).
type Presence = events.Presence

// peerState is what this peer knows of another, and its score.
type peerState struct {
	PeerStatus
	configured  bool // static by this peer's configuration
	consecutive int  // failures in a row, for backoff
	busy        bool // a session with it runs now
}

// recentSessions is how many session reports status keeps.
const recentSessions = 64

// peerTable discovers peers, scores them and schedules sessions.
type peerTable struct {
	s   *Service
	env *service.Env

	mu     sync.Mutex
	peers  map[events.PeerID]*peerState
	recent []SyncReport
	limits *limiter // sessions started, per peer and overall

	// The discovery state (discovery.go): who is present, and the
	// static peers added at run time. Set by open.
	presence, static jetstream.KeyValue

	slots   chan struct{} // bounds the sessions this peer runs at once
	trigger chan events.PeerID
	wg      sync.WaitGroup
}

func newPeerTable(s *Service, env *service.Env) *peerTable {
	t := &peerTable{
		s: s, env: env,
		peers:   map[events.PeerID]*peerState{},
		limits:  newLimiter(env.Clock, 1, 4, 20, 40),
		slots:   make(chan struct{}, s.cfg.MaxInitiated),
		trigger: make(chan events.PeerID, 64),
	}
	for _, p := range s.cfg.StaticPeers {
		if p != env.Peer {
			t.peers[p] = &peerState{PeerStatus: PeerStatus{Peer: p, Static: true, Score: 0.5}, configured: true}
		}
	}
	return t
}

// run announces this peer, records the peers it hears, and syncs on the
// interval and when a peer connects, until ctx ends. open must have
// succeeded first.
func (t *peerTable) run(ctx context.Context) error {
	defer t.wg.Wait()
	if t.env.Peer != "" {
		// One replica of this peer's service records each heartbeat. The
		// group's name is this peer's own: queue groups span leafnodes,
		// so a name shared by every peer would hand each heartbeat to a
		// single peer of the whole mesh.
		sub, err := t.env.Conn.QueueSubscribe(events.PresencePrefix+".*", Name+"_presence_"+string(t.env.Peer), t.heard(ctx))
		if err != nil {
			return err
		}
		defer func() { _ = sub.Unsubscribe() }()
		t.announce()
	}
	presence := t.env.Clock.NewTicker(t.s.cfg.PresenceInterval)
	defer presence.Stop()
	var interval <-chan time.Time
	if t.s.cfg.SyncInterval > 0 {
		tick := t.env.Clock.NewTicker(t.s.cfg.SyncInterval)
		defer tick.Stop()
		interval = tick.C()
	}
	for _, p := range t.s.cfg.StaticPeers {
		t.kick(p)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-presence.C():
			t.announce()
		case <-interval:
			for _, p := range t.eligible() {
				t.start(ctx, p)
			}
		case p := <-t.trigger:
			t.start(ctx, p)
		}
	}
}

// announce publishes this peer's heartbeat.
func (t *peerTable) announce() {
	if t.env.Peer == "" {
		return
	}
	b, err := events.EncodePresence(Presence{Peer: t.env.Peer, IntervalMillis: t.s.cfg.PresenceInterval.Milliseconds()})
	if err != nil {
		return
	}
	_ = t.env.Conn.Publish(events.PresenceSubject(t.env.Peer), b)
}

// kick asks for a session with peer soon, without blocking.
func (t *peerTable) kick(p events.PeerID) {
	select {
	case t.trigger <- p:
	default:
	}
}

// eligible returns the peers to sync now, best score first: present or
// static, not backing off.
func (t *peerTable) eligible() []events.PeerID {
	now := t.env.Clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var list []*peerState
	for _, ps := range t.peers {
		if (ps.Present || ps.Static) && !now.Before(ps.RetryAt) {
			list = append(list, ps)
		}
	}
	slices.SortFunc(list, func(a, b *peerState) int { return cmp.Compare(b.Score, a.Score) })
	out := make([]events.PeerID, len(list))
	for i, ps := range list {
		out[i] = ps.Peer
	}
	return out
}

// start runs a background session with p for every authority this peer
// holds a credential for, unless one runs already, p is backing off or
// over its rate, or every session slot is taken.
func (t *peerTable) start(ctx context.Context, p events.PeerID) {
	if !t.claim(p, false) {
		return
	}
	select {
	case t.slots <- struct{}{}:
	default:
		t.release(p)
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer func() { <-t.slots }()
		defer t.release(p)
		for _, a := range t.authorities() {
			if ctx.Err() != nil {
				return
			}
			t.record(t.s.syncWith(ctx, p, a))
		}
	}()
}

// syncNow runs sessions on auth with peer (every eligible peer when
// empty) now, and reports them: the on-demand trigger. An explicit peer is
// tried even while it backs off.
func (t *peerTable) syncNow(ctx context.Context, auth events.AuthorityID, peer events.PeerID) []SyncReport {
	targets := []events.PeerID{peer}
	if peer == "" {
		targets = t.eligible()
	}
	var out []SyncReport
	for _, p := range targets {
		if !t.claim(p, peer != "") {
			out = append(out, failed(SyncReport{Peer: p, Authority: auth, Started: t.env.Clock.Now()},
				events.Errorf(events.ReasonRateLimited, "a session with peer %s runs already, or it is over its session rate; retry shortly", p)))
			continue
		}
		rep := t.s.syncWith(ctx, p, auth)
		t.release(p)
		t.record(rep)
		out = append(out, rep)
	}
	return out
}

// claim marks p busy if no session with it runs, it is not backing off
// (unless force), and the session rate limits allow one more.
func (t *peerTable) claim(p events.PeerID, force bool) bool {
	if p == t.env.Peer || p.Validate() != nil {
		return false
	}
	now := t.env.Clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.peer(p)
	if ps.busy || !force && now.Before(ps.RetryAt) || !t.limits.allow(string(p)) {
		return false
	}
	ps.busy = true
	return true
}

func (t *peerTable) release(p events.PeerID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ps := t.peers[p]; ps != nil {
		ps.busy = false
	}
}

// authorities returns the authorities this peer holds credentials for.
func (t *peerTable) authorities() []events.AuthorityID {
	out := make([]events.AuthorityID, 0, len(t.s.creds))
	for a := range t.s.creds {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// latencyWeight is how much one session moves the smoothed latency.
const latencyWeight = 0.2

// record scores a finished session: success rate, smoothed latency, and
// for a failure exponential backoff with jitter.
func (t *peerTable) record(rep SyncReport) {
	now := t.env.Clock.Now()
	d, _ := time.ParseDuration(rep.Duration)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.recent = append(t.recent, rep)
	if len(t.recent) > recentSessions {
		t.recent = t.recent[len(t.recent)-recentSessions:]
	}
	ps := t.peers[rep.Peer]
	if ps == nil {
		return
	}
	ms := float64(d.Milliseconds())
	if ps.Successes+ps.Failures == 0 {
		ps.LatencyMillis = ms
	} else {
		ps.LatencyMillis += latencyWeight * (ms - ps.LatencyMillis)
	}
	if rep.State == StateCompleted {
		ps.Successes++
		ps.consecutive = 0
		ps.RetryAt = time.Time{}
	} else {
		ps.Failures++
		ps.consecutive++
		ps.RetryAt = now.Add(t.backoff(ps.consecutive))
	}
	ps.Score = score(ps.Successes, ps.Failures, ps.LatencyMillis)
}

// backoff is the wait after n failures in a row: BaseBackoff doubled per
// failure, capped at MaxBackoff, times a jitter in [0.5, 1.5) so that
// peers that failed together do not retry together.
func (t *peerTable) backoff(n int) time.Duration {
	d := float64(t.s.cfg.BaseBackoff) * math.Pow(2, float64(min(n-1, 30)))
	d = min(d, float64(t.s.cfg.MaxBackoff))
	return time.Duration(d * (0.5 + t.s.cfg.Rand()))
}

// score is the Laplace-smoothed success rate, discounted by latency (a
// one-second session halves it).
func score(successes, failures int, latencyMillis float64) float64 {
	rate := float64(successes+1) / float64(successes+failures+2)
	return rate / (1 + latencyMillis/1000)
}

// snapshot copies the peers and recent sessions for status.
func (t *peerTable) snapshot() ([]PeerStatus, []SyncReport) {
	t.mu.Lock()
	defer t.mu.Unlock()
	peers := make([]PeerStatus, 0, len(t.peers))
	for _, ps := range t.peers {
		peers = append(peers, ps.PeerStatus)
	}
	return peers, slices.Clone(t.recent)
}
