package sim

import (
	"crypto/ed25519"
	"fmt"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/antientropy/riblt"
)

// The messages peers exchange. A session is named by an id the initiator
// picks; every message of it carries a step (negentropy) or a symbol
// offset (riblt), so a duplicated or late reply is recognised as stale
// and dropped instead of being fed to the protocol twice.
type (
	negQuery struct {
		session uint64
		step    int
		msg     []byte
	}
	negReply struct {
		session uint64
		step    int
		msg     []byte
		err     error
	}
	ribltRequest struct {
		session  uint64
		from, to int
	}
	ribltSymbols struct {
		session uint64
		from    int
		symbols []byte
		err     error
	}
	// factRequest asks for facts by id (after negentropy) and by id
	// prefix (after riblt); factPush carries encoded facts
	// (events.Fact.Marshal), decoded and checked again on arrival.
	factRequest struct {
		ids      []events.FactID
		prefixes []riblt.Prefix
	}
	factPush struct{ facts [][]byte }
)

// peer is one simulated site: its facts, the structures reconciliation
// runs over, its documents, and the sessions it has open.
type peer struct {
	id     int
	device ed25519.PrivateKey
	clock  *events.Clock

	facts map[events.FactID]*events.Fact
	// byPrefix finds facts by the riblt prefix of their ids, as the
	// service's fetch by prefix does.
	byPrefix map[riblt.Prefix][]events.FactID
	index    *negentropy.Index
	sketch   *riblt.Sketch
	fold     Folder

	initiated  map[uint64]*initiation
	responding map[uint64]*response
}

// initiation is a session this peer started.
type initiation struct {
	with       int
	lastActive int
	step       int
	neg        *negentropy.Initiator
	dec        *riblt.Decoder
}

// response is a riblt session another peer started here. It codes the
// set as it was when the session opened, so every batch of symbols is a
// prefix of the same sequence.
type response struct {
	lastActive int
	sketch     *riblt.Sketch
}

// add stores a fact the peer does not hold yet and folds it. It reports
// whether the fact was new.
func (p *peer) add(f *events.Fact) bool {
	if _, ok := p.facts[f.ID]; ok {
		return false
	}
	p.facts[f.ID] = f
	prefix := riblt.PrefixOf(f.ID)
	p.byPrefix[prefix] = append(p.byPrefix[prefix], f.ID)
	p.index.Insert(negentropy.Item{Timestamp: uint64(f.HLC.Seconds()), ID: f.ID})
	p.sketch.Add(f.ID)
	p.fold.Apply(f)
	p.clock.Observe(f.HLC)
	return true
}

// receive decodes and verifies a fact from another peer, as the guard
// does with facts pulled from a remote, and adds it. verified remembers
// the facts whose signatures some peer already checked: the answer is the
// same on every peer, and checking each copy again would spend most of a
// run in ed25519.
func (p *peer) receive(raw []byte, verified map[events.FactID]bool) (bool, error) {
	f, err := events.DecodeFact(raw)
	if err != nil {
		return false, fmt.Errorf("peer %d: fact from another peer does not decode: %w", p.id, err)
	}
	if _, held := p.facts[f.ID]; held {
		return false, nil
	}
	if !verified[f.ID] {
		if err := f.VerifySignature(); err != nil {
			return false, fmt.Errorf("peer %d: %w", p.id, err)
		}
		verified[f.ID] = true
	}
	return p.add(f), nil
}

// encoded returns the facts of ids this peer holds, encoded for a push;
// ids it does not hold are skipped (the asker learnt of them from an older
// or another set).
func (p *peer) encoded(ids []events.FactID) [][]byte {
	out := make([][]byte, 0, len(ids))
	for _, id := range ids {
		if f, ok := p.facts[id]; ok {
			out = append(out, f.Marshal())
		}
	}
	return out
}

// withPrefixes returns the ids of the facts this peer holds under
// prefixes, in the order asked.
func (p *peer) withPrefixes(prefixes []riblt.Prefix) []events.FactID {
	var ids []events.FactID
	for _, prefix := range prefixes {
		ids = append(ids, p.byPrefix[prefix]...)
	}
	return ids
}
