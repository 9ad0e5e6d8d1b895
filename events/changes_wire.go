package events

import (
	"encoding/json"

	eventsv1 "github.com/factsync/factsync/events/v1"
)

// EncodeChange encodes c as an eventsv1.Change, the form published on
// ChangesSubject. c.Fact must be the hex form of a FactID.
func EncodeChange(c Change) ([]byte, error) {
	fact, err := ParseFactID(c.Fact)
	if err != nil {
		return nil, err
	}
	d := c.Document
	fields := make(map[string][]byte, len(d.Fields))
	for name, v := range d.Fields {
		fields[name] = v
	}
	return encodeEvent("change", &eventsv1.Change{
		Authority: string(c.Authority),
		Document: &eventsv1.Document{
			Collection: d.Collection,
			Id:         d.ID,
			Fields:     fields,
			Deleted:    d.Deleted,
			Version:    &eventsv1.Version{Hlc: &eventsv1.HLC{WallMillis: d.Version.HLC.WallMillis, Logical: d.Version.HLC.Logical}, Fact: d.Version.Fact[:]},
		},
		Fact: fact[:],
		Seq:  c.Seq,
	})
}

// DecodeChange decodes a change event. It refuses, with ReasonMalformed,
// a change whose fact ids are not 32 bytes or whose fields are not valid
// field names with JSON values, so an observer can fold what it gets.
func DecodeChange(data []byte) (Change, error) {
	var m eventsv1.Change
	if err := decodeEvent("change", data, &m); err != nil {
		return Change{}, err
	}
	fact, err := factIDOf("change fact", m.GetFact())
	if err != nil {
		return Change{}, err
	}
	md := m.GetDocument()
	version, err := factIDOf("document version fact", md.GetVersion().GetFact())
	if err != nil {
		return Change{}, err
	}
	var fields map[string]json.RawMessage
	if len(md.GetFields()) > 0 {
		fields = make(map[string]json.RawMessage, len(md.GetFields()))
	}
	for name, v := range md.GetFields() {
		if err := CheckFieldName(name); err != nil {
			return Change{}, err
		}
		if !json.Valid(v) {
			return Change{}, Errorf(ReasonMalformed, "field %q of the changed document is not valid JSON", name)
		}
		fields[name] = v
	}
	hlc := md.GetVersion().GetHlc()
	return Change{
		Authority: AuthorityID(m.GetAuthority()),
		Document: Document{
			Collection: md.GetCollection(),
			ID:         md.GetId(),
			Fields:     fields,
			Deleted:    md.GetDeleted(),
			Version:    Version{HLC: HLC{WallMillis: hlc.GetWallMillis(), Logical: hlc.GetLogical()}, Fact: version},
		},
		Fact: fact.String(),
		Seq:  m.GetSeq(),
	}, nil
}

// factIDOf reads a 32-byte FactID carried as bytes.
func factIDOf(what string, b []byte) (FactID, error) {
	var id FactID
	if len(b) != len(id) {
		return id, Errorf(ReasonMalformed, "%s is %d bytes, want %d", what, len(b), len(id))
	}
	copy(id[:], b)
	return id, nil
}
