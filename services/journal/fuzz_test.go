package journal

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"testing"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
)

// otherAuthorityFact is a delete by an authority other than testFact's,
// so a checkpoint holds two folds.
func otherAuthorityFact(t testing.TB) *events.Fact {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, 32))
	token := sha256.Sum256([]byte("t"))
	f, err := events.SignFact(key, &eventsv1.FactBody{
		AuthorityKey: key.Public().(ed25519.PublicKey), Hlc: &eventsv1.HLC{WallMillis: 2},
		Collection: "tasks", Document: "b", TokenHash: token[:],
		Op: &eventsv1.FactBody_Delete{Delete: &eventsv1.Delete{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// FuzzDecodeCheckpoint decodes checkpoint files whose body is arbitrary
// but whose trailing hash matches it, as a bug or a disk could leave one:
// the trailing hash alone would stop the fuzzer at the first byte. No body
// crashes the decoder, each refusal is ReasonMalformed, and whatever
// decodes re-encodes to the same file.
func FuzzDecodeCheckpoint(f *testing.F) {
	r := newReplica(nil)
	r.apply([]folded{{fact: testFact(f), seq: 3}, {fact: otherAuthorityFact(f), seq: 4}}, tip{seq: 4, hash: sha256.Sum256([]byte("m"))})
	_, data, err := r.encode(42)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data[:len(data)-sha256.Size])
	f.Add([]byte(checkpointMagic))
	f.Fuzz(func(t *testing.T, body []byte) {
		sum := sha256.Sum256(body)
		file := append(body[:len(body):len(body)], sum[:]...)
		c, err := decodeCheckpoint(file)
		if err != nil {
			if !events.IsReason(err, events.ReasonMalformed) {
				t.Fatalf("refused without ReasonMalformed: %v", err)
			}
			return
		}
		again := newReplica(nil)
		again.tip, again.folds = c.tip, c.folds
		if _, data, err := again.encode(c.streamCreated); err != nil || string(data) != string(file) {
			t.Fatalf("checkpoint decodes but re-encodes to other bytes (%v)", err)
		}
	})
}
