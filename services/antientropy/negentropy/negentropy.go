package negentropy

import (
	"github.com/factsync/factsync/events"
)

// ProtocolVersion is the first byte of every negentropy V1 message.
const ProtocolVersion = 0x61

// Modes of a range in a message.
const (
	ModeSkip        = 0
	ModeFingerprint = 1
	ModeIDList      = 2
)

// Frame sizes. A message never exceeds its side's frame size limit; the
// part of the set it could not cover goes back as one fingerprint, to be
// taken up in the next round. 0 means no limit.
const (
	MinFrameSizeLimit     = 4096
	DefaultFrameSizeLimit = 60_000
	// frameSlack is the room kept for the closing fingerprint range, as in
	// the reference implementation.
	frameSlack = 200
)

// buckets is how many ranges a differing range splits into, and a range of
// fewer than 2*buckets items is sent as an id list instead.
const buckets = 16

// session is the state one side keeps across the messages of a
// reconciliation: only its role and frame limit, because each message
// starts its timestamp deltas from zero.
type session struct {
	storage          Storage
	frameSizeLimit   int
	initiator        bool
	lastTimestampIn  uint64
	lastTimestampOut uint64
}

func newSession(s Storage, frameSizeLimit int, initiator bool) (session, error) {
	if frameSizeLimit != 0 && frameSizeLimit < MinFrameSizeLimit {
		return session{}, events.Errorf(events.ReasonMalformed, "negentropy frame size limit %d is below the minimum %d", frameSizeLimit, MinFrameSizeLimit)
	}
	return session{storage: s, frameSizeLimit: frameSizeLimit, initiator: initiator}, nil
}

// Initiator starts a reconciliation and learns the difference: the ids it
// has that the responder lacks, and the ids it needs.
type Initiator struct {
	session
	started bool
	// reported holds every id already returned as have or need: after a
	// frame overflow a range can be reconciled twice.
	reported map[events.FactID]struct{}
}

// NewInitiator returns an initiator over s. frameSizeLimit bounds every
// message it sends (0 for no limit, else at least MinFrameSizeLimit).
func NewInitiator(s Storage, frameSizeLimit int) (*Initiator, error) {
	ss, err := newSession(s, frameSizeLimit, true)
	return &Initiator{session: ss, reported: map[events.FactID]struct{}{}}, err
}

// Initiate returns the first message: fingerprints of 16 ranges covering
// the whole set, or the ids themselves when the set is small.
func (in *Initiator) Initiate() ([]byte, error) {
	if in.started {
		return nil, events.Errorf(events.ReasonConflict, "negentropy session already initiated")
	}
	in.started = true
	in.lastTimestampOut = 0
	out := []byte{ProtocolVersion}
	return in.splitRange(out, 0, in.storage.Len(), Bound{Item: Item{Timestamp: Infinity}}), nil
}

// Reconcile processes the responder's reply. It returns the next message
// to send, or nil when reconciliation is complete, plus the ids found so
// far that only the initiator has (have) and that only the responder has
// (need).
func (in *Initiator) Reconcile(reply []byte) (next []byte, have, need []events.FactID, err error) {
	if !in.started {
		return nil, nil, nil, events.Errorf(events.ReasonConflict, "negentropy initiator has not initiated")
	}
	d := diff{}
	out, err := in.reconcile(reply, &d)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(out) == 1 {
		out = nil
	}
	return out, in.firstReport(d.have), in.firstReport(d.need), nil
}

// firstReport drops the ids reported in an earlier round.
func (in *Initiator) firstReport(ids []events.FactID) []events.FactID {
	fresh := ids[:0]
	for _, id := range ids {
		if _, seen := in.reported[id]; !seen {
			in.reported[id] = struct{}{}
			fresh = append(fresh, id)
		}
	}
	return fresh
}

// Responder answers an initiator. It learns nothing itself; the initiator
// works out both directions of the difference.
type Responder struct {
	session
}

// NewResponder returns a responder over s.
func NewResponder(s Storage, frameSizeLimit int) (*Responder, error) {
	ss, err := newSession(s, frameSizeLimit, false)
	return &Responder{session: ss}, err
}

// Reconcile answers one message from the initiator. A message of another
// protocol version gets a reply of just this side's version byte, which
// tells the initiator what is spoken here.
func (r *Responder) Reconcile(query []byte) ([]byte, error) {
	return r.reconcile(query, nil)
}

type diff struct {
	have, need []events.FactID
}

func (s *session) reconcile(query []byte, d *diff) ([]byte, error) {
	s.lastTimestampIn, s.lastTimestampOut = 0, 0
	in := reader{buf: query}
	full := []byte{ProtocolVersion}

	version, err := in.bytes(1)
	if err != nil {
		return nil, err
	}
	if version[0] < 0x60 || version[0] > 0x6f {
		return nil, events.Errorf(events.ReasonMalformed, "invalid negentropy protocol version byte 0x%02x", version[0])
	}
	if version[0] != ProtocolVersion {
		if s.initiator {
			return nil, events.Errorf(events.ReasonProtocolVersion, "responder speaks negentropy version %d, this peer speaks %d", version[0]-0x60, ProtocolVersion-0x60)
		}
		return full, nil
	}

	size := s.storage.Len()
	var prevBound Bound
	prevIndex := 0
	skip := false

	for !in.empty() {
		var o []byte
		flushSkip := func() {
			if skip {
				skip = false
				o = s.appendBound(o, prevBound)
				o = appendVarint(o, ModeSkip)
			}
		}

		currBound, err := s.decodeBound(&in)
		if err != nil {
			return nil, err
		}
		mode, err := in.varint()
		if err != nil {
			return nil, err
		}
		lower := prevIndex
		upper := max(lower, s.storage.LowerBound(currBound.Item))

		switch mode {
		case ModeSkip:
			skip = true

		case ModeFingerprint:
			theirs, err := in.bytes(FingerprintSize)
			if err != nil {
				return nil, err
			}
			ours := s.fingerprint(lower, upper)
			if string(theirs) != string(ours[:]) {
				flushSkip()
				o = s.splitRange(o, lower, upper, currBound)
			} else {
				skip = true
			}

		case ModeIDList:
			n, err := in.varint()
			if err != nil {
				return nil, err
			}
			if n > uint64(len(in.buf)/IDSize) {
				return nil, errTruncated
			}
			theirs := make(map[events.FactID]struct{}, n)
			for range n {
				id, _ := in.bytes(IDSize)
				theirs[events.FactID(id)] = struct{}{}
			}
			if s.initiator {
				s.storage.Iterate(lower, upper, func(it Item, _ int) bool {
					if _, ok := theirs[it.ID]; ok {
						delete(theirs, it.ID)
					} else {
						d.have = append(d.have, it.ID)
					}
					return true
				})
				for id := range theirs {
					d.need = append(d.need, id)
				}
				skip = true
				break
			}
			// The responder answers with its own ids for the range, as
			// many as fit in the frame; the rest of the range goes into
			// the closing fingerprint.
			flushSkip()
			var ids []byte
			count := 0
			endBound := currBound
			s.storage.Iterate(lower, upper, func(it Item, pos int) bool {
				if s.exceedsFrame(len(full) + len(ids)) {
					endBound = Bound{Item: it, PrefixLen: IDSize}
					upper = pos
					return false
				}
				ids = append(ids, it.ID[:]...)
				count++
				return true
			})
			o = s.appendBound(o, endBound)
			o = appendVarint(o, ModeIDList)
			o = appendVarint(o, uint64(count))
			o = append(o, ids...)
			full = append(full, o...)
			o = nil

		default:
			return nil, events.Errorf(events.ReasonMalformed, "unexpected negentropy mode %d", mode)
		}

		if s.exceedsFrame(len(full) + len(o)) {
			// Out of room: stop here and send one fingerprint for the
			// rest of the set, which the other side will split again.
			// This is the reference implementations' rule, kept byte for
			// byte; it can bring a settled range back into play, which is
			// why the initiator filters repeated ids.
			rest := s.fingerprint(upper, size)
			full = s.appendBound(full, Bound{Item: Item{Timestamp: Infinity}})
			full = appendVarint(full, ModeFingerprint)
			full = append(full, rest[:]...)
			break
		}
		full = append(full, o...)
		prevIndex = upper
		prevBound = currBound
	}
	return full, nil
}

// splitRange describes positions [lower, upper), which end at upperBound:
// as an id list when small, else as 16 fingerprinted buckets of near-equal
// size.
func (s *session) splitRange(o []byte, lower, upper int, upperBound Bound) []byte {
	n := upper - lower
	if n < 2*buckets {
		o = s.appendBound(o, upperBound)
		o = appendVarint(o, ModeIDList)
		o = appendVarint(o, uint64(n))
		s.storage.Iterate(lower, upper, func(it Item, _ int) bool {
			o = append(o, it.ID[:]...)
			return true
		})
		return o
	}
	perBucket, withExtra := n/buckets, n%buckets
	curr := lower
	for i := range buckets {
		size := perBucket
		if i < withExtra {
			size++
		}
		fp := s.fingerprint(curr, curr+size)
		curr += size
		next := upperBound
		if curr != upper {
			var prev, at Item
			s.storage.Iterate(curr-1, curr+1, func(it Item, pos int) bool {
				if pos == curr-1 {
					prev = it
				} else {
					at = it
				}
				return true
			})
			next = minimalBound(prev, at)
		}
		o = s.appendBound(o, next)
		o = appendVarint(o, ModeFingerprint)
		o = append(o, fp[:]...)
	}
	return o
}

func (s *session) fingerprint(from, to int) [FingerprintSize]byte {
	sum := s.storage.Sum(from, to)
	return sum.Fingerprint(uint64(to - from))
}

func (s *session) exceedsFrame(n int) bool {
	return s.frameSizeLimit != 0 && n > s.frameSizeLimit-frameSlack
}

// Timestamps travel as deltas from the previous bound of the same message,
// plus one; 0 stands for Infinity, after which every bound is Infinity.

func (s *session) appendBound(o []byte, b Bound) []byte {
	o = s.appendTimestamp(o, b.Timestamp)
	o = appendVarint(o, uint64(b.PrefixLen))
	return append(o, b.ID[:b.PrefixLen]...)
}

func (s *session) appendTimestamp(o []byte, ts uint64) []byte {
	if ts == Infinity {
		s.lastTimestampOut = Infinity
		return appendVarint(o, 0)
	}
	delta := ts - s.lastTimestampOut
	s.lastTimestampOut = ts
	return appendVarint(o, delta+1)
}

func (s *session) decodeBound(in *reader) (Bound, error) {
	enc, err := in.varint()
	if err != nil {
		return Bound{}, err
	}
	ts := uint64(Infinity)
	if enc != 0 && s.lastTimestampIn != Infinity {
		ts = s.lastTimestampIn + enc - 1
	}
	s.lastTimestampIn = ts
	n, err := in.varint()
	if err != nil {
		return Bound{}, err
	}
	if n > uint64(IDSize) {
		return Bound{}, events.Errorf(events.ReasonMalformed, "negentropy bound id prefix is %d bytes, at most %d", n, IDSize)
	}
	prefix, err := in.bytes(int(n))
	if err != nil {
		return Bound{}, err
	}
	b := Bound{Item: Item{Timestamp: ts}, PrefixLen: int(n)}
	copy(b.ID[:], prefix)
	return b, nil
}
