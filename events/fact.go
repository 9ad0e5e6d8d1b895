package events

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	eventsv1 "github.com/factsync/factsync/events/v1"
	"google.golang.org/protobuf/proto"
)

// FactSchemaVersion is the only FactBody.schema_version this build accepts.
const FactSchemaVersion = 1

// Signing domains. Every Ed25519 signature in factsync is over a prefix
// naming what is signed, so a signature of one kind can never be replayed
// as another.
const (
	DomainFact = "factsync/fact/v1\x00"
)

// FactID is SHA-256 of a fact's exact body bytes. Ed25519 signatures are
// deterministic and Go rejects non-canonical ones, so a body has exactly one
// valid signature per key and the body alone identifies the fact.
type FactID [32]byte

// String returns the lowercase hex form, used as Nats-Msg-Id.
func (id FactID) String() string { return hex.EncodeToString(id[:]) }

// Compare orders FactIDs bytewise.
func (id FactID) Compare(o FactID) int { return bytes.Compare(id[:], o[:]) }

// ParseFactID parses the hex form of a FactID.
func ParseFactID(s string) (FactID, error) {
	var id FactID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, Errorf(ReasonMalformed, "fact id %q is not 64 hex characters", s)
	}
	copy(id[:], b)
	return id, nil
}

// TokenHash returns the lowercase hex SHA-256 of a token, the key by which
// facts cite it.
func TokenHash(token []byte) string {
	sum := sha256.Sum256(token)
	return hex.EncodeToString(sum[:])
}

// Fact is a decoded signed fact. Body and Signature are the exact bytes
// received; everything else is derived from them.
type Fact struct {
	ID        FactID
	Body      []byte
	Signature []byte
	Decoded   *eventsv1.FactBody

	Authority AuthorityID
	Device    DeviceID
	HLC       HLC
}

// Collection returns the collection the fact writes.
func (f *Fact) Collection() string { return f.Decoded.GetCollection() }

// Document returns the document id the fact writes.
func (f *Fact) Document() string { return f.Decoded.GetDocument() }

// IsDelete reports whether the fact deletes its document.
func (f *Fact) IsDelete() bool { return f.Decoded.GetDelete() != nil }

// Fields returns the fields a put sets, or nil for a delete. Decode has
// already checked that they form a JSON object.
func (f *Fact) Fields() map[string]json.RawMessage {
	put := f.Decoded.GetPut()
	if put == nil {
		return nil
	}
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(put.GetFieldsJson(), &fields)
	return fields
}

// AuthorityKey returns the authority public key carried by the fact.
func (f *Fact) AuthorityKey() ed25519.PublicKey { return f.Decoded.GetAuthorityKey() }

// DeviceKey returns the device public key that signed the fact.
func (f *Fact) DeviceKey() ed25519.PublicKey { return f.Decoded.GetDeviceKey() }

// TokenHash returns the hex hash of the token the fact cites.
func (f *Fact) TokenHash() string { return hex.EncodeToString(f.Decoded.GetTokenHash()) }

// Marshal encodes the fact as a SignedFact, the form stored in JOURNAL.
func (f *Fact) Marshal() []byte {
	b, _ := proto.Marshal(&eventsv1.SignedFact{Body: f.Body, Signature: f.Signature})
	return b
}

// Proto returns the fact as a SignedFact message.
func (f *Fact) Proto() *eventsv1.SignedFact {
	return &eventsv1.SignedFact{Body: f.Body, Signature: f.Signature}
}

// VerifySignature checks the device's Ed25519 signature over the body.
func (f *Fact) VerifySignature() error {
	if !ed25519.Verify(f.DeviceKey(), signedMessage(DomainFact, f.Body), f.Signature) {
		return Errorf(ReasonBadSignature, "fact %s: signature does not verify with device %s", f.ID, f.Device)
	}
	return nil
}

func signedMessage(domain string, body []byte) []byte {
	m := make([]byte, 0, len(domain)+len(body))
	return append(append(m, domain...), body...)
}

// SignFact encodes body and signs it with the device key. It fills in
// schema_version and device_key, and checks the result as DecodeFact would.
func SignFact(device ed25519.PrivateKey, body *eventsv1.FactBody) (*Fact, error) {
	body = proto.CloneOf(body)
	body.SchemaVersion = FactSchemaVersion
	body.DeviceKey = device.Public().(ed25519.PublicKey)
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(body)
	if err != nil {
		return nil, Wrap(ReasonMalformed, err, "encode fact body")
	}
	sig := ed25519.Sign(device, signedMessage(DomainFact, raw))
	return decodeBody(raw, sig)
}

// DecodeFact decodes a SignedFact and checks its shape: sizes, schema
// version, key lengths, names, HLC and the fields' JSON. It does not verify
// the signature or the token; the guard does that.
func DecodeFact(signedFact []byte) (*Fact, error) {
	if len(signedFact) > MaxFactBody+256 {
		return nil, Errorf(ReasonTooLarge, "signed fact is %d bytes, limit %d", len(signedFact), MaxFactBody+256)
	}
	var sf eventsv1.SignedFact
	if err := proto.Unmarshal(signedFact, &sf); err != nil {
		return nil, Wrap(ReasonMalformed, err, "decode signed fact")
	}
	return FactFromProto(&sf)
}

// FactFromProto checks a SignedFact already decoded from a batch.
func FactFromProto(sf *eventsv1.SignedFact) (*Fact, error) {
	return decodeBody(sf.GetBody(), sf.GetSignature())
}

func decodeBody(raw, sig []byte) (*Fact, error) {
	if len(raw) > MaxFactBody {
		return nil, Errorf(ReasonTooLarge, "fact body is %d bytes, limit %d", len(raw), MaxFactBody)
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, Errorf(ReasonMalformed, "signature is %d bytes, want %d", len(sig), ed25519.SignatureSize)
	}
	var body eventsv1.FactBody
	if err := proto.Unmarshal(raw, &body); err != nil {
		return nil, Wrap(ReasonMalformed, err, "decode fact body")
	}
	if body.GetSchemaVersion() != FactSchemaVersion {
		return nil, Errorf(ReasonSchemaVersion, "fact schema version %d, this peer knows %d", body.GetSchemaVersion(), FactSchemaVersion)
	}
	if len(body.GetAuthorityKey()) != ed25519.PublicKeySize || len(body.GetDeviceKey()) != ed25519.PublicKeySize {
		return nil, Errorf(ReasonMalformed, "authority and device keys must be %d bytes", ed25519.PublicKeySize)
	}
	if len(body.GetTokenHash()) != sha256.Size {
		return nil, Errorf(ReasonMalformed, "token hash is %d bytes, want %d", len(body.GetTokenHash()), sha256.Size)
	}
	if err := CheckName("collection", body.GetCollection()); err != nil {
		return nil, err
	}
	if err := CheckName("document id", body.GetDocument()); err != nil {
		return nil, err
	}
	if body.GetHlc() == nil || body.GetHlc().GetWallMillis() == 0 {
		return nil, Errorf(ReasonMalformed, "fact has no hlc")
	}
	switch op := body.GetOp().(type) {
	case *eventsv1.FactBody_Put:
		if err := checkFields(op.Put.GetFieldsJson()); err != nil {
			return nil, err
		}
	case *eventsv1.FactBody_Delete:
	default:
		return nil, Errorf(ReasonMalformed, "fact is neither a put nor a delete")
	}
	f := &Fact{
		ID:        sha256.Sum256(raw),
		Body:      raw,
		Signature: sig,
		Decoded:   &body,
		Authority: AuthorityIDOf(body.GetAuthorityKey()),
		Device:    DeviceIDOf(body.GetDeviceKey()),
		HLC:       HLC{WallMillis: body.GetHlc().GetWallMillis(), Logical: body.GetHlc().GetLogical()},
	}
	return f, nil
}

// MaxJSONDepth bounds nesting in field values, so a hostile fact cannot make
// a decoder recurse without limit.
const MaxJSONDepth = 32

// checkFields requires a JSON object with at least one field, valid field
// names, and nesting no deeper than MaxJSONDepth.
func checkFields(raw []byte) error {
	if !json.Valid(raw) {
		return Errorf(ReasonMalformed, "fields are not valid JSON")
	}
	if d := jsonDepth(raw); d > MaxJSONDepth {
		return Errorf(ReasonMalformed, "fields nest %d deep, limit %d", d, MaxJSONDepth)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return Errorf(ReasonMalformed, "fields must be a JSON object")
	}
	if len(fields) == 0 {
		return Errorf(ReasonMalformed, "a put must set at least one field")
	}
	for name := range fields {
		if err := CheckFieldName(name); err != nil {
			return err
		}
	}
	return nil
}

// CheckFieldName accepts field names of 1 to MaxNameLen printable characters
// without '.', which the query language uses for nothing today but reserves
// for paths.
func CheckFieldName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return Errorf(ReasonMalformed, "field name %q must be 1 to %d characters", name, MaxNameLen)
	}
	for _, c := range name {
		if c < ' ' || c == 0x7f || c == '.' {
			return Errorf(ReasonMalformed, "field name %q has a control character or '.'", name)
		}
	}
	return nil
}

// jsonDepth returns the deepest nesting of arrays and objects in valid JSON.
func jsonDepth(raw []byte) int {
	depth, deepest, inString, escaped := 0, 0, false, false
	for _, c := range raw {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case inString:
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}
