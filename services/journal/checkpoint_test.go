package journal

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"testing"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/service"
)

func testFact(t testing.TB) *events.Fact {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	token := sha256.Sum256([]byte("t"))
	fields, _ := json.Marshal(map[string]any{"n": 1})
	f, err := events.SignFact(key, &eventsv1.FactBody{
		AuthorityKey: key.Public().(ed25519.PublicKey), Hlc: &eventsv1.HLC{WallMillis: 1},
		Collection: "tasks", Document: "a", TokenHash: token[:],
		Op: &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: fields}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestCheckpointRoundTripAndDamage(t *testing.T) {
	f := testFact(t)
	r := newReplica(nil)
	r.apply([]folded{{fact: f, seq: 7}}, tip{seq: 7, hash: sha256.Sum256([]byte("m"))})
	_, data, err := r.encode(42)
	if err != nil {
		t.Fatal(err)
	}
	c, err := decodeCheckpoint(data)
	if err != nil {
		t.Fatal(err)
	}
	if c.tip != r.tip || c.streamCreated != 42 || c.folds[f.Authority].Digest() != r.folds[f.Authority].Digest() {
		t.Fatalf("round trip: %+v", c)
	}
	for i := range data {
		damaged := bytes.Clone(data)
		damaged[i] ^= 1
		if _, err := decodeCheckpoint(damaged); !events.IsReason(err, events.ReasonMalformed) {
			t.Fatalf("flipping byte %d: %v", i, err)
		}
	}
	if _, err := decodeCheckpoint(data[:len(data)-1]); err == nil {
		t.Fatal("a truncated checkpoint decoded")
	}
}

// TestCheckpointMustMatchTheStreamTip checks that a checkpoint is trusted
// only when JOURNAL still holds its last message at its sequence.
func TestCheckpointMustMatchTheStreamTip(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	ctx := context.Background()
	if err := bus.Provision(ctx, h.JS, events.JournalStream()); err != nil {
		t.Fatal(err)
	}
	f := testFact(t)
	ack, err := h.JS.Publish(ctx, events.JournalSubject(f.Authority, "tasks"), f.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	stream, err := h.JS.Stream(ctx, events.StreamJournal)
	if err != nil {
		t.Fatal(err)
	}
	r := &run{env: &service.Env{DataDir: t.TempDir()}, stream: stream}
	good := tip{seq: ack.Sequence, hash: sha256.Sum256(f.Marshal())}
	for name, c := range map[string]struct {
		tip  tip
		want bool
	}{
		"same message":    {good, true},
		"other message":   {tip{seq: good.seq, hash: sha256.Sum256([]byte("other"))}, false},
		"beyond the tail": {tip{seq: good.seq + 1, hash: good.hash}, false},
	} {
		if got := r.streamHolds(ctx, c.tip); got != c.want {
			t.Errorf("%s: streamHolds = %v, want %v", name, got, c.want)
		}
	}
}
