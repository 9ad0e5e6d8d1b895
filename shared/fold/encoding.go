package fold

import (
	"encoding/binary"
	"encoding/json"
	"github.com/factsync/factsync/shared/binread"
	"maps"
	"slices"

	"github.com/factsync/factsync/events"
)

// The canonical encoding of a State, used for checkpoints, snapshots and
// the digest. Everything is in ascending order, so equal States encode to
// equal bytes:
//
//	magic "fsfold1\n"
//	uvarint #collections, then per collection (by name):
//	  string name, uvarint #documents, then per document (by id):
//	    string id, version latest, version deleted,
//	    uvarint #fields, then per field (by name): string name, version, bytes value
//
// A string or bytes value is a uvarint length and the bytes; a version is
// the 12 HLC bytes and the 32 FactID bytes.
const magic = "fsfold1\n"

const versionSize = events.HLCSize + len(events.FactID{})

// MarshalBinary returns the canonical encoding of the state.
func (s *State) MarshalBinary() ([]byte, error) {
	b := []byte(magic)
	b = binary.AppendUvarint(b, uint64(len(s.collections)))
	for _, coll := range s.Collections() {
		docs := s.collections[coll]
		b = appendString(b, coll)
		b = binary.AppendUvarint(b, uint64(len(docs)))
		for _, id := range slices.Sorted(maps.Keys(docs)) {
			d := docs[id]
			b = appendString(b, id)
			b = appendVersion(b, d.latest)
			b = appendVersion(b, d.deleted)
			b = binary.AppendUvarint(b, uint64(len(d.fields)))
			for _, name := range slices.Sorted(maps.Keys(d.fields)) {
				fl := d.fields[name]
				b = appendString(b, name)
				b = appendVersion(b, fl.version)
				b = appendString(b, string(fl.value))
			}
		}
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendVersion(b []byte, v events.Version) []byte {
	h := v.HLC.Bytes()
	return append(append(b, h[:]...), v.Fact[:]...)
}

// UnmarshalBinary replaces the state with a decoded one. It accepts only
// canonical encodings of states the fold can reach (valid names and JSON,
// ascending order, no field hidden by the delete), because a snapshot may
// come from another peer.
func (s *State) UnmarshalBinary(data []byte) error {
	r := reader{binread.New(data, "fold state")}
	if string(r.Next(len(magic))) != magic {
		return r.Fail("not a fold state encoding")
	}
	collections := map[string]map[string]*doc{}
	prevColl := ""
	for range r.Count() {
		coll := r.Text()
		if r.Err() == nil && (events.CheckName("collection", coll) != nil || coll <= prevColl) {
			return r.Fail("collection %q is invalid or out of order", coll)
		}
		prevColl = coll
		docs := map[string]*doc{}
		prevID := ""
		for range r.Count() {
			id := r.Text()
			if r.Err() == nil && (events.CheckName("document id", id) != nil || id <= prevID) {
				return r.Fail("document %q in %s is invalid or out of order", id, coll)
			}
			prevID = id
			d := &doc{latest: r.version(), deleted: r.version(), fields: map[string]field{}}
			prevField := ""
			for range r.Count() {
				name, v, value := r.Text(), r.version(), r.Text()
				if r.Err() != nil {
					break
				}
				switch {
				case events.CheckFieldName(name) != nil || name <= prevField:
					return r.Fail("field %q of %s/%s is invalid or out of order", name, coll, id)
				case v.Compare(d.deleted) <= 0 || v.Compare(d.latest) > 0:
					return r.Fail("field %q of %s/%s has a version outside its document's", name, coll, id)
				case !json.Valid([]byte(value)):
					return r.Fail("field %q of %s/%s is not valid JSON", name, coll, id)
				}
				prevField = name
				d.fields[name] = field{value: json.RawMessage(value), version: v}
			}
			if r.Err() == nil && (d.latest.IsZero() || d.deleted.Compare(d.latest) > 0 || (d.deleted.IsZero() && len(d.fields) == 0)) {
				return r.Fail("document %s/%s has inconsistent versions", coll, id)
			}
			docs[id] = d
		}
		collections[coll] = docs
	}
	if err := r.Finish(); err != nil {
		return err
	}
	s.collections = collections
	return nil
}

// reader is a binread.Reader that also reads fold versions.
type reader struct{ *binread.Reader }

func (r reader) version() events.Version {
	b := r.Next(versionSize)
	if b == nil {
		return events.Version{}
	}
	h, _ := events.HLCFromBytes(b[:events.HLCSize])
	var v events.Version
	v.HLC = h
	copy(v.Fact[:], b[events.HLCSize:])
	return v
}
