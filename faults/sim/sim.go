package sim

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/antientropy/riblt"
)

// Config sizes one run. Zero fields take the defaults of DefaultConfig.
type Config struct {
	Seed uint64
	// Peers is how many sites take part; Writes how many facts they write
	// during the chaos phase.
	Peers  int
	Writes int
	// ChaosTicks is the length of the phase with writes and partitions;
	// SettleTicks bounds the phase after the final heal in which peers
	// must converge.
	ChaosTicks  int
	SettleTicks int
	Faults      Faults
	// PartitionRate is the chance per tick of a partition starting (when
	// healed) or healing (when partitioned).
	PartitionRate float64
	// SessionRate is the chance per tick that a peer starts a
	// reconciliation with a random other peer.
	SessionRate float64
	// SessionTTL is how many ticks a session may stay idle before either
	// side forgets it; lost messages leave sessions that only this ends.
	SessionTTL int
	// SketchSize is the riblt symbols each peer keeps; a larger difference
	// makes a riblt session give up, and negentropy covers it.
	SketchSize int
	// NewFold makes each peer's fold (RealFold when nil).
	NewFold func() Folder
	// ReplayFlags are the go test flags that select this configuration,
	// for the replay command a failure prints (e.g. "-long").
	ReplayFlags string
}

// DefaultConfig is the CI size: small enough for thousands of seeds under
// the race detector, large enough that every fault and protocol path is
// taken in most runs.
func DefaultConfig(seed uint64) Config {
	return Config{
		Seed:          seed,
		Peers:         4,
		Writes:        16,
		ChaosTicks:    100,
		SettleTicks:   4000,
		Faults:        Faults{Drop: 0.1, Duplicate: 0.05, MaxDelay: 6},
		PartitionRate: 0.05,
		SessionRate:   0.08,
		SessionTTL:    20,
		SketchSize:    256,
	}
}

// LongConfig is the size of `make faults`.
func LongConfig(seed uint64) Config {
	c := DefaultConfig(seed)
	c.Peers, c.Writes, c.ChaosTicks = 7, 150, 600
	return c
}

func (c Config) withDefaults() Config {
	d := DefaultConfig(c.Seed)
	set := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&c.Peers, d.Peers)
	set(&c.Writes, d.Writes)
	set(&c.ChaosTicks, d.ChaosTicks)
	set(&c.SettleTicks, d.SettleTicks)
	set(&c.SessionTTL, d.SessionTTL)
	set(&c.SketchSize, d.SketchSize)
	if c.Faults == (Faults{}) {
		c.Faults = d.Faults
	}
	if c.PartitionRate == 0 {
		c.PartitionRate = d.PartitionRate
	}
	if c.SessionRate == 0 {
		c.SessionRate = d.SessionRate
	}
	if c.NewFold == nil {
		c.NewFold = RealFold
	}
	return c
}

// Stats count what a run did.
type Stats struct {
	Ticks, Facts, ConcurrentWrites                int
	Sessions, NegentropySessions, RibltSessions   int
	Completed, Aborted, Expired                   int
	Sent, Dropped, Duplicated, Partitioned, Stale int
	Partitions, FactsMoved, DuplicateFacts        int
	MaxInFlight                                   int
}

// Result is the outcome of a run: its statistics and the documents'
// digest every peer agreed on.
type Result struct {
	Stats
	Digest [32]byte
}

// Failure is a run that did not converge, with the seed that replays it.
type Failure struct {
	Seed   uint64
	Reason string
	// Replay is the command that runs this seed alone.
	Replay string
}

func (f *Failure) Error() string {
	return fmt.Sprintf("seed %d: %s (replay: %s)", f.Seed, f.Reason, f.Replay)
}

// epoch is the simulated wall clock at tick 0; a tick is msPerTick.
var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const msPerTick = 50

// maxOpen bounds the sessions a peer initiates at once.
const maxOpen = 2

// The documents devices write: few, so that edits collide.
var (
	collections = []string{"notes", "tasks"}
	documentIDs = []string{"a", "b", "c"}
	fieldNames  = []string{"title", "owner", "done"}
)

// world is one run in progress.
type world struct {
	cfg       Config
	rng       *rand.Rand
	now       int
	net       *network
	peers     []*peer
	authority ed25519.PublicKey
	tokenHash []byte
	written   []*events.Fact
	verified  map[events.FactID]bool
	nextID    uint64
	stats     Stats
	err       error // first protocol error; ends the run
}

// Run simulates one seed and checks convergence. A non-nil error is a
// *Failure naming the seed.
func Run(cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	w := &world{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x5eed)), verified: map[events.FactID]bool{}}
	w.net = newNetwork(w.rng, cfg.Peers, cfg.Faults, &w.stats)
	authPub, _ := w.newKey()
	w.authority = authPub
	sum := sha256.Sum256([]byte("the authority's token for every simulated device"))
	w.tokenHash = sum[:]
	for i := range cfg.Peers {
		_, device := w.newKey()
		skew := int64(w.rng.IntN(3)) * 7 // ms; equal skews make equal HLCs possible
		w.peers = append(w.peers, &peer{
			id:         i,
			device:     device,
			clock:      events.NewClock(func() time.Time { return w.wallClock(skew) }, events.HLC{}),
			facts:      map[events.FactID]*events.Fact{},
			byPrefix:   map[riblt.Prefix][]events.FactID{},
			index:      &negentropy.Index{},
			sketch:     riblt.NewSketch(cfg.SketchSize),
			fold:       cfg.NewFold(),
			initiated:  map[uint64]*initiation{},
			responding: map[uint64]*response{},
		})
	}

	for ; w.now < cfg.ChaosTicks && w.err == nil; w.now++ {
		if w.rng.Float64() < cfg.PartitionRate {
			if w.net.healed() {
				w.net.partition()
			} else {
				w.net.heal()
			}
		}
		if len(w.written) < cfg.Writes && w.rng.Float64() < 2*float64(cfg.Writes)/float64(cfg.ChaosTicks) {
			w.writeBurst()
		}
		w.tick()
	}
	w.net.heal()
	for end := w.now + cfg.SettleTicks; w.now < end && w.err == nil && !(w.now%8 == 0 && w.converged()); w.now++ {
		w.tick()
	}
	w.stats.Ticks = w.now
	w.stats.Facts = len(w.written)
	w.stats.MaxInFlight = w.net.maxSize
	if w.err != nil {
		return Result{Stats: w.stats}, w.fail("%v", w.err)
	}
	return w.check()
}

func (w *world) newKey() (ed25519.PublicKey, ed25519.PrivateKey) {
	var seed [ed25519.SeedSize]byte
	for i := range seed {
		seed[i] = byte(w.rng.Uint32())
	}
	priv := ed25519.NewKeyFromSeed(seed[:])
	return priv.Public().(ed25519.PublicKey), priv
}

func (w *world) wallClock(skewMillis int64) time.Time {
	return epoch.Add(time.Duration(int64(w.now)*msPerTick+skewMillis) * time.Millisecond)
}

func (w *world) fail(format string, args ...any) error {
	replay := fmt.Sprintf("go test ./faults/sim -run 'TestSim$' -seed %d", w.cfg.Seed)
	if w.cfg.ReplayFlags != "" {
		replay += " " + w.cfg.ReplayFlags
	}
	return &Failure{Seed: w.cfg.Seed, Reason: fmt.Sprintf(format, args...), Replay: replay}
}

// tick is one step of simulated time: peers start sessions, idle sessions
// expire, and the messages due arrive.
func (w *world) tick() {
	for _, p := range w.peers {
		if len(p.initiated) < maxOpen && w.rng.Float64() < w.cfg.SessionRate {
			other := (p.id + 1 + w.rng.IntN(len(w.peers)-1)) % len(w.peers)
			w.initiate(p, other)
		}
		w.expire(p)
	}
	w.net.deliver(w.now, w.handle)
}

// writeBurst has one to three peers write the same document at this tick:
// concurrent edits, at equal HLCs when their clocks agree.
func (w *world) writeBurst() {
	coll := collections[w.rng.IntN(len(collections))]
	doc := documentIDs[w.rng.IntN(len(documentIDs))]
	writers := w.rng.Perm(len(w.peers))[:1+w.rng.IntN(min(3, len(w.peers)))]
	if len(writers) > 1 {
		w.stats.ConcurrentWrites += len(writers)
	}
	for _, i := range writers {
		if len(w.written) == w.cfg.Writes {
			return
		}
		p := w.peers[i]
		body := &eventsv1.FactBody{
			AuthorityKey: w.authority,
			Hlc:          hlcProto(p.clock.Now()),
			Collection:   coll,
			Document:     doc,
			TokenHash:    w.tokenHash,
		}
		if w.rng.IntN(10) == 0 {
			body.Op = &eventsv1.FactBody_Delete{Delete: &eventsv1.Delete{}}
		} else {
			fields := map[string]int{}
			for range 1 + w.rng.IntN(2) {
				fields[fieldNames[w.rng.IntN(len(fieldNames))]] = w.rng.IntN(100)
			}
			raw, _ := json.Marshal(fields)
			body.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: raw}}
		}
		f, err := events.SignFact(p.device, body)
		if err != nil {
			w.err = fmt.Errorf("peer %d: sign fact: %w", p.id, err)
			return
		}
		p.add(f)
		w.written = append(w.written, f)
	}
}

func hlcProto(h events.HLC) *eventsv1.HLC {
	return &eventsv1.HLC{WallMillis: h.WallMillis, Logical: h.Logical}
}

// initiate opens a session from p to other, negentropy or riblt at random.
// The initiator reconciles over a copy of its set as it is now, as a real
// session does over a read view.
func (w *world) initiate(p *peer, other int) {
	w.nextID++
	id := w.nextID
	s := &initiation{with: other, lastActive: w.now}
	w.stats.Sessions++
	if w.rng.IntN(2) == 0 {
		w.stats.NegentropySessions++
		var snapshot negentropy.Storage
		p.index.Clone().View(func(s negentropy.Storage) { snapshot = s }) // the clone never changes
		neg, err := negentropy.NewInitiator(snapshot, negentropy.MinFrameSizeLimit)
		if err != nil {
			w.err = err
			return
		}
		msg, err := neg.Initiate()
		if err != nil {
			w.err = err
			return
		}
		s.neg = neg
		w.net.send(w.now, p.id, other, negQuery{session: id, msg: msg})
	} else {
		w.stats.RibltSessions++
		s.dec = riblt.NewDecoder(p.sketch.Clone())
		w.net.send(w.now, p.id, other, ribltRequest{session: id, from: 0, to: riblt.FirstBatch})
	}
	p.initiated[id] = s
}

// expire forgets sessions idle for longer than SessionTTL, on both sides.
// Map order does not matter here: deleting is independent per entry.
func (w *world) expire(p *peer) {
	for id, s := range p.initiated {
		if w.now-s.lastActive > w.cfg.SessionTTL {
			delete(p.initiated, id)
			w.stats.Expired++
		}
	}
	for id, r := range p.responding {
		if w.now-r.lastActive > w.cfg.SessionTTL {
			delete(p.responding, id)
		}
	}
}

// handle delivers one message.
func (w *world) handle(e *envelope) {
	p := w.peers[e.to]
	switch m := e.body.(type) {
	case negQuery:
		w.respondNegentropy(p, e.from, m)
	case negReply:
		w.continueNegentropy(p, m)
	case ribltRequest:
		w.respondRiblt(p, e.from, m)
	case ribltSymbols:
		w.continueRiblt(p, m)
	case factRequest:
		if facts := p.encoded(append(slices.Clone(m.ids), p.withPrefixes(m.prefixes)...)); len(facts) > 0 {
			w.net.send(w.now, p.id, e.from, factPush{facts: facts})
		}
	case factPush:
		for _, raw := range m.facts {
			added, err := p.receive(raw, w.verified)
			if err != nil {
				w.err = err
				return
			}
			if added {
				w.stats.FactsMoved++
			} else {
				w.stats.DuplicateFacts++
			}
		}
	default:
		w.err = fmt.Errorf("peer %d: unknown message %T", p.id, m)
	}
}

// respondNegentropy answers one message over the peer's live index: a
// responder keeps nothing between messages but its frame limit, so facts
// that arrive between two messages of a session are seen by the next.
func (w *world) respondNegentropy(p *peer, from int, m negQuery) {
	var reply []byte
	var err error
	p.index.View(func(s negentropy.Storage) {
		var r *negentropy.Responder
		if r, err = negentropy.NewResponder(s, negentropy.MinFrameSizeLimit); err == nil {
			reply, err = r.Reconcile(m.msg)
		}
	})
	w.net.send(w.now, p.id, from, negReply{session: m.session, step: m.step, msg: reply, err: err})
}

func (w *world) continueNegentropy(p *peer, m negReply) {
	s := p.initiated[m.session]
	if s == nil || s.neg == nil || m.step != s.step {
		w.stats.Stale++
		return
	}
	if m.err != nil {
		w.err = fmt.Errorf("peer %d: negentropy responder %d refused step %d: %w", p.id, s.with, m.step, m.err)
		return
	}
	next, have, need, err := s.neg.Reconcile(m.msg)
	if err != nil {
		w.err = fmt.Errorf("peer %d: negentropy reply from %d: %w", p.id, s.with, err)
		return
	}
	w.exchange(p, s.with, have, factRequest{ids: slices.Clone(need)})
	if next == nil {
		delete(p.initiated, m.session)
		w.stats.Completed++
		return
	}
	s.step++
	s.lastActive = w.now
	w.net.send(w.now, p.id, s.with, negQuery{session: m.session, step: s.step, msg: next})
}

// respondRiblt sends the symbols asked for. A session starts at symbol 0;
// a later batch of a session this side has forgotten is refused, since a
// new copy of the sketch might code another set.
func (w *world) respondRiblt(p *peer, from int, m ribltRequest) {
	r := p.responding[m.session]
	if r == nil {
		if m.from != 0 {
			err := events.Errorf(events.ReasonNotFound, "riblt session %d is not open here", m.session)
			w.net.send(w.now, p.id, from, ribltSymbols{session: m.session, from: m.from, err: err})
			return
		}
		r = &response{sketch: p.sketch.Clone()}
		p.responding[m.session] = r
	}
	r.lastActive = w.now
	symbols, err := r.sketch.AppendSymbols(nil, m.from, m.to)
	w.net.send(w.now, p.id, from, ribltSymbols{session: m.session, from: m.from, symbols: symbols, err: err})
}

func (w *world) continueRiblt(p *peer, m ribltSymbols) {
	s := p.initiated[m.session]
	if s == nil || s.dec == nil || m.from != s.dec.Received() {
		w.stats.Stale++
		return
	}
	if m.err != nil {
		// The difference outgrew the sketch, or the responder forgot the
		// session: give up, a later session will cover it.
		delete(p.initiated, m.session)
		w.stats.Aborted++
		return
	}
	if err := s.dec.AddSymbols(m.symbols); err != nil {
		w.err = fmt.Errorf("peer %d: riblt symbols from %d: %w", p.id, s.with, err)
		return
	}
	if s.dec.Done() {
		// The facts behind the prefixes. The fingerprint check
		// (riblt.Decoder.Confirm) is left out: the facts asked for
		// arrive later, and no two ids here share a prefix.
		w.exchange(p, s.with, p.withPrefixes(s.dec.Local()), factRequest{prefixes: slices.Clone(s.dec.Remote())})
		delete(p.initiated, m.session)
		w.stats.Completed++
		return
	}
	n := s.dec.NextBatch()
	if n == 0 { // the sketch is too small for this difference
		delete(p.initiated, m.session)
		w.stats.Aborted++
		return
	}
	s.lastActive = w.now
	from := s.dec.Received()
	w.net.send(w.now, p.id, s.with, ribltRequest{session: m.session, from: from, to: from + n})
}

// exchange pushes the facts the other side lacks and asks for those this
// side lacks.
func (w *world) exchange(p *peer, other int, have []events.FactID, need factRequest) {
	if facts := p.encoded(have); len(facts) > 0 {
		w.net.send(w.now, p.id, other, factPush{facts: facts})
	}
	if len(need.ids)+len(need.prefixes) > 0 {
		w.net.send(w.now, p.id, other, need)
	}
}

// converged reports whether every peer holds the same fact set, by the
// negentropy root fingerprint of its index.
func (w *world) converged() bool {
	sum0, n0 := w.peers[0].index.Root()
	for _, p := range w.peers[1:] {
		if sum, n := p.index.Root(); n != n0 || sum != sum0 {
			return false
		}
	}
	return true
}

// check is the verdict: every peer holds exactly the facts written, every
// peer's documents are the same, and they are the documents of the same
// facts folded in another order.
func (w *world) check() (Result, error) {
	res := Result{Stats: w.stats}
	want := make([]events.FactID, len(w.written))
	for i, f := range w.written {
		want[i] = f.ID
	}
	slices.SortFunc(want, events.FactID.Compare)
	for _, p := range w.peers {
		got := make([]events.FactID, 0, len(p.facts))
		p.index.View(func(s negentropy.Storage) {
			s.Iterate(0, s.Len(), func(it negentropy.Item, _ int) bool {
				got = append(got, it.ID)
				return true
			})
		})
		slices.SortFunc(got, events.FactID.Compare)
		if !slices.Equal(got, want) {
			return res, w.fail("after %d ticks peer %d holds %d facts, %d were written (%d in its index): not converged",
				w.now, p.id, len(p.facts), len(want), len(got))
		}
	}
	res.Digest = w.peers[0].fold.Digest()
	for _, p := range w.peers[1:] {
		if d := p.fold.Digest(); d != res.Digest {
			return res, w.fail("peers 0 and %d hold the same %d facts but their documents differ (digest %x vs %x)",
				p.id, len(want), res.Digest[:6], d[:6])
		}
	}
	reference := w.cfg.NewFold()
	byID := slices.Clone(w.written)
	slices.SortFunc(byID, func(a, b *events.Fact) int { return a.ID.Compare(b.ID) })
	for _, f := range byID {
		reference.Apply(f)
	}
	if d := reference.Digest(); d != res.Digest {
		return res, w.fail("every peer agrees on documents %x, but folding the same facts in id order gives %x", res.Digest[:6], d[:6])
	}
	return res, nil
}
