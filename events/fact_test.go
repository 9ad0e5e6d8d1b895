package events_test

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"
)

func seededKey(t *rapid.T, label string) ed25519.PrivateKey {
	seed := rapid.SliceOfN(rapid.Byte(), ed25519.SeedSize, ed25519.SeedSize).Draw(t, label)
	return ed25519.NewKeyFromSeed(seed)
}

func genBody(t *rapid.T, authority ed25519.PrivateKey) *eventsv1.FactBody {
	name := rapid.StringMatching(`[A-Za-z0-9_-]{1,20}`)
	body := &eventsv1.FactBody{
		AuthorityKey: authority.Public().(ed25519.PublicKey),
		Hlc: &eventsv1.HLC{
			WallMillis: rapid.Uint64Range(1, 1<<50).Draw(t, "wall"),
			Logical:    rapid.Uint32().Draw(t, "logical"),
		},
		Collection: name.Draw(t, "collection"),
		Document:   name.Draw(t, "document"),
		TokenHash:  rapid.SliceOfN(rapid.Byte(), 32, 32).Draw(t, "tokenhash"),
	}
	if rapid.Bool().Draw(t, "delete") {
		body.Op = &eventsv1.FactBody_Delete{Delete: &eventsv1.Delete{Reason: rapid.String().Draw(t, "reason")}}
	} else {
		fields := rapid.MapOfN(rapid.StringMatching(`[a-z]{1,8}`), rapid.Int(), 1, 5).Draw(t, "fields")
		raw, _ := json.Marshal(fields)
		body.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: raw}}
	}
	return body
}

// A signed fact survives encoding and decoding with the same identity and
// meaning, and its signature verifies.
func TestFactRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		authority := seededKey(t, "authority")
		device := seededKey(t, "device")
		body := genBody(t, authority)

		f, err := events.SignFact(device, body)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		got, err := events.DecodeFact(f.Marshal())
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if got.ID != f.ID {
			t.Fatalf("id changed across round trip: %s != %s", got.ID, f.ID)
		}
		if err := got.VerifySignature(); err != nil {
			t.Fatalf("verify: %v", err)
		}
		if got.Authority != events.AuthorityIDOf(authority.Public().(ed25519.PublicKey)) {
			t.Fatalf("authority id %s does not hash from the key", got.Authority)
		}
		if got.Device != events.DeviceIDOf(device.Public().(ed25519.PublicKey)) {
			t.Fatalf("device id %s does not hash from the key", got.Device)
		}
		if got.Collection() != body.Collection || got.Document() != body.Document || got.IsDelete() != (body.GetDelete() != nil) {
			t.Fatalf("decoded fact lost its meaning")
		}
		if got.HLC != (events.HLC{WallMillis: body.Hlc.WallMillis, Logical: body.Hlc.Logical}) {
			t.Fatalf("hlc changed: %v", got.HLC)
		}
	})
}

// Changing any byte of the body or signature either breaks decoding or
// breaks the signature: no tampering goes unnoticed.
func TestFactTamperIsDetected(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		f, err := events.SignFact(seededKey(t, "device"), genBody(t, seededKey(t, "authority")))
		if err != nil {
			t.Fatal(err)
		}
		body := append([]byte(nil), f.Body...)
		sig := append([]byte(nil), f.Signature...)
		if rapid.Bool().Draw(t, "flip body") {
			i := rapid.IntRange(0, len(body)-1).Draw(t, "i")
			body[i] ^= 1 << rapid.IntRange(0, 7).Draw(t, "bit")
		} else {
			i := rapid.IntRange(0, len(sig)-1).Draw(t, "i")
			sig[i] ^= 1 << rapid.IntRange(0, 7).Draw(t, "bit")
		}
		raw, _ := proto.Marshal(&eventsv1.SignedFact{Body: body, Signature: sig})
		got, err := events.DecodeFact(raw)
		if err != nil {
			return
		}
		if got.VerifySignature() == nil {
			t.Fatalf("tampered fact still verifies")
		}
	})
}

func TestDecodeFactRejects(t *testing.T) {
	authority := ed25519.NewKeyFromSeed(make([]byte, 32))
	device := ed25519.NewKeyFromSeed(append(make([]byte, 31), 1))
	base := func() *eventsv1.FactBody {
		return &eventsv1.FactBody{
			AuthorityKey: authority.Public().(ed25519.PublicKey),
			Hlc:          &eventsv1.HLC{WallMillis: 1},
			Collection:   "notes", Document: "a",
			TokenHash: make([]byte, 32),
			Op:        &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`{"x":1}`)}},
		}
	}
	deep := `{"x":` + repeat("[", 40) + repeat("]", 40) + `}`
	cases := []struct {
		name   string
		edit   func(*eventsv1.FactBody)
		reason events.Reason
	}{
		{"bad collection", func(b *eventsv1.FactBody) { b.Collection = "no.dots" }, events.ReasonMalformed},
		{"empty document", func(b *eventsv1.FactBody) { b.Document = "" }, events.ReasonMalformed},
		{"no hlc", func(b *eventsv1.FactBody) { b.Hlc = nil }, events.ReasonMalformed},
		{"short token hash", func(b *eventsv1.FactBody) { b.TokenHash = []byte{1} }, events.ReasonMalformed},
		{"fields not object", func(b *eventsv1.FactBody) {
			b.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`[1]`)}}
		}, events.ReasonMalformed},
		{"empty put", func(b *eventsv1.FactBody) {
			b.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`{}`)}}
		}, events.ReasonMalformed},
		{"too deep", func(b *eventsv1.FactBody) {
			b.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(deep)}}
		}, events.ReasonMalformed},
		{"no op", func(b *eventsv1.FactBody) { b.Op = nil }, events.ReasonMalformed},
		{"too large", func(b *eventsv1.FactBody) {
			b.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`{"x":"` + repeat("a", events.MaxFactBody) + `"}`)}}
		}, events.ReasonTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := base()
			c.edit(b)
			_, err := events.SignFact(device, b)
			if got := events.ReasonOf(err); got != c.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, c.reason)
			}
		})
	}
	t.Run("unknown schema version", func(t *testing.T) {
		f, err := events.SignFact(device, base())
		if err != nil {
			t.Fatal(err)
		}
		f.Decoded.SchemaVersion = 2
		raw, _ := proto.Marshal(f.Decoded)
		sf, _ := proto.Marshal(&eventsv1.SignedFact{Body: raw, Signature: f.Signature})
		if _, err := events.DecodeFact(sf); events.ReasonOf(err) != events.ReasonSchemaVersion {
			t.Fatalf("got %v, want schema_version", err)
		}
	})
}

func repeat(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}

// FuzzDecodeFact: no input crashes the decoder, and whatever decodes
// re-encodes to bytes with the same identity.
func FuzzDecodeFact(f *testing.F) {
	device := ed25519.NewKeyFromSeed(make([]byte, 32))
	good, err := events.SignFact(device, &eventsv1.FactBody{
		AuthorityKey: device.Public().(ed25519.PublicKey), Hlc: &eventsv1.HLC{WallMillis: 1},
		Collection: "c", Document: "d", TokenHash: make([]byte, 32),
		Op: &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`{"a":[1,{"b":"c"}]}`)}},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good.Marshal())
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		fact, err := events.DecodeFact(b)
		if err != nil {
			if events.ReasonOf(err) == events.ReasonInternal {
				t.Fatalf("decode error without a reason code: %v", err)
			}
			return
		}
		again, err := events.DecodeFact(fact.Marshal())
		if err != nil || again.ID != fact.ID {
			t.Fatalf("decoded fact does not re-decode to the same id: %v", err)
		}
	})
}
