package snapshot

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/capability"
)

// testNow is the fake time of tests; facts are written in the hour before.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// writer is an authority with one device and a token that may write, sync
// and snapshot every collection.
type writer struct {
	authPub  ed25519.PublicKey
	authPriv ed25519.PrivateKey
	devPub   ed25519.PublicKey
	devPriv  ed25519.PrivateKey
	token    []byte
}

func seededKey(rng *rand.Rand) (ed25519.PublicKey, ed25519.PrivateKey) {
	var seed [ed25519.SeedSize]byte
	for i := range seed {
		seed[i] = byte(rng.UintN(256))
	}
	priv := ed25519.NewKeyFromSeed(seed[:])
	return priv.Public().(ed25519.PublicKey), priv
}

func newWriter(t testing.TB, rng *rand.Rand) *writer {
	t.Helper()
	w := &writer{}
	w.authPub, w.authPriv = seededKey(rng)
	w.devPub, w.devPriv = seededKey(rng)
	rights, err := capability.ParseRights([]string{"*:write", "*:sync", "*:snapshot", "*:read"})
	if err != nil {
		t.Fatal(err)
	}
	if w.token, err = capability.Mint(w.authPriv, w.devPub, rights, testNow.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *writer) auth() events.AuthorityID { return events.AuthorityIDOf(w.authPub) }

// fact signs a put (fields) or, with fields nil, a delete.
func (w *writer) fact(t testing.TB, coll, doc string, at time.Time, logical uint32, fields map[string]any) *events.Fact {
	t.Helper()
	hash, _ := hex.DecodeString(events.TokenHash(w.token))
	body := &eventsv1.FactBody{
		AuthorityKey: w.authPub,
		Hlc:          &eventsv1.HLC{WallMillis: uint64(at.UnixMilli()), Logical: logical},
		Collection:   coll,
		Document:     doc,
		TokenHash:    hash,
	}
	if fields == nil {
		body.Op = &eventsv1.FactBody_Delete{Delete: &eventsv1.Delete{}}
	} else {
		raw, _ := json.Marshal(fields)
		body.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: raw}}
	}
	f, err := events.SignFact(w.devPriv, body)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// history writes n facts over docs documents in the hour before testNow:
// mostly puts of one or two fields, with a delete now and then, so most
// facts are superseded and some documents end deleted.
func (w *writer) history(t testing.TB, rng *rand.Rand, n, docs int) []*events.Fact {
	t.Helper()
	out := make([]*events.Fact, 0, n)
	start := testNow.Add(-time.Hour)
	for i := range n {
		at := start.Add(time.Duration(i) * time.Hour / time.Duration(n))
		doc := fmt.Sprintf("d%d", rng.IntN(docs))
		coll := []string{"notes", "tasks"}[rng.IntN(2)]
		var fields map[string]any
		if rng.IntN(10) != 0 {
			fields = map[string]any{"n": i}
			if rng.IntN(2) == 0 {
				fields["title"] = fmt.Sprintf("t%d", rng.IntN(5))
			}
		}
		out = append(out, w.fact(t, coll, doc, at, 0, fields))
	}
	return out
}
