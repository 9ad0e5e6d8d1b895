package sdk

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"strings"

	"github.com/factsync/factsync/events"
)

// EncodeFields turns the fields a caller passes to Upsert into a JSON
// object: a map, a struct, json.RawMessage or []byte holding a JSON object.
// Every field's value may be any JSON value.
func EncodeFields(fields any) (json.RawMessage, error) {
	var raw []byte
	switch v := fields.(type) {
	case nil:
		return nil, events.Errorf(events.ReasonMalformed, "upsert needs at least one field")
	case json.RawMessage:
		raw = v
	case []byte:
		raw = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, events.Wrap(events.ReasonMalformed, err, "fields do not encode as JSON")
		}
		raw = b
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, events.Errorf(events.ReasonMalformed, "fields must be a JSON object")
	}
	if len(obj) == 0 {
		return nil, events.Errorf(events.ReasonMalformed, "upsert needs at least one field")
	}
	for name := range obj {
		if err := events.CheckFieldName(name); err != nil {
			return nil, err
		}
	}
	return json.RawMessage(raw), nil
}

// NewDocumentID returns a fresh random document id: 26 lowercase base32
// characters (130 random bits), valid as a NATS subject token.
func NewDocumentID() string {
	var b [17]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))[:26]
}
