package sdk_test

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/shared/clock"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/factsync/factsync/events/v1"
)

func testConfig(t *testing.T, c clock.Clock, dir string) sdk.Config {
	t.Helper()
	return sdk.Config{
		AuthorityKey: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)).Public().(ed25519.PublicKey),
		DeviceKey:    ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)),
		Token:        []byte("device token"),
		StateDir:     dir,
		Clock:        c,
	}
}

func TestSignerSignsVerifiableFactsCitingTheToken(t *testing.T) {
	cfg := testConfig(t, clock.NewFake(time.UnixMilli(1_700_000_000_000)), "")
	s, err := sdk.NewSigner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	facts, err := s.Sign(
		sdk.Write{Collection: "tasks", Document: "t1", Fields: []byte(`{"title":"x"}`)},
		sdk.Write{Collection: "tasks", Document: "t1", Delete: true, Reason: "done"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if len(facts) != 2 || facts[0].HLC.Compare(facts[1].HLC) >= 0 {
		t.Fatalf("want two facts with increasing HLCs, got %v", facts)
	}
	for _, f := range facts {
		if err := f.VerifySignature(); err != nil {
			t.Fatal(err)
		}
		if f.Authority != cfg.Authority() || f.Device != cfg.Device() {
			t.Fatalf("fact names %s/%s, want %s/%s", f.Authority, f.Device, cfg.Authority(), cfg.Device())
		}
		if f.TokenHash() != events.TokenHash(cfg.Token) {
			t.Fatalf("fact cites token %s, want %s", f.TokenHash(), events.TokenHash(cfg.Token))
		}
	}
	if !facts[1].IsDelete() || facts[1].Decoded.GetDelete().GetReason() != "done" {
		t.Fatalf("second fact is not the delete with its reason")
	}

	raw, err := proto.Marshal(s.Batch(facts))
	if err != nil {
		t.Fatal(err)
	}
	var batch eventsv1.FactBatch
	if err := proto.Unmarshal(raw, &batch); err != nil {
		t.Fatal(err)
	}
	if len(batch.Tokens) != 1 || !bytes.Equal(batch.Tokens[0], cfg.Token) || len(batch.Facts) != 2 {
		t.Fatalf("batch carries %d tokens and %d facts, want the token once and 2 facts", len(batch.Tokens), len(batch.Facts))
	}
	for i, sf := range batch.Facts {
		f, err := events.FactFromProto(sf)
		if err != nil || f.ID != facts[i].ID {
			t.Fatalf("batch fact %d does not round-trip: %v", i, err)
		}
	}
}

func TestSignerHLCStaysMonotonicAcrossRestartWhenTheWallClockStepsBack(t *testing.T) {
	dir := t.TempDir()
	wall := clock.NewFake(time.UnixMilli(1_700_000_000_000))
	first, err := sdk.NewSigner(testConfig(t, wall, dir))
	if err != nil {
		t.Fatal(err)
	}
	before, err := first.Sign(sdk.Write{Collection: "c", Document: "d", Fields: []byte(`{"a":1}`)})
	if err != nil {
		t.Fatal(err)
	}

	stepped := clock.NewFake(time.UnixMilli(1_600_000_000_000)) // the wall clock stepped back
	second, err := sdk.NewSigner(testConfig(t, stepped, dir))
	if err != nil {
		t.Fatal(err)
	}
	after, err := second.Sign(sdk.Write{Collection: "c", Document: "d", Fields: []byte(`{"a":2}`)})
	if err != nil {
		t.Fatal(err)
	}
	if after[0].HLC.Compare(before[0].HLC) <= 0 {
		t.Fatalf("after restart HLC %s is not after %s", after[0].HLC, before[0].HLC)
	}

	// Without a state directory the restarted clock follows the wall clock.
	volatile, err := sdk.NewSigner(testConfig(t, stepped, ""))
	if err != nil {
		t.Fatal(err)
	}
	if h := volatile.LastHLC(); h != (events.HLC{}) {
		t.Fatalf("fresh signer without state starts at %s", h)
	}
}

func TestSignerRejectsBadWrites(t *testing.T) {
	s, err := sdk.NewSigner(testConfig(t, nil, ""))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]sdk.Write{
		"bad collection": {Collection: "a.b", Document: "d", Fields: []byte(`{"a":1}`)},
		"bad id":         {Collection: "c", Document: "", Fields: []byte(`{"a":1}`)},
		"no fields":      {Collection: "c", Document: "d", Fields: []byte(`{}`)},
		"not an object":  {Collection: "c", Document: "d", Fields: []byte(`[1]`)},
		"put and delete": {Collection: "c", Document: "d", Fields: []byte(`{"a":1}`), Delete: true},
	}
	for name, w := range cases {
		if _, err := s.Sign(w); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("%s: got %v, want a malformed error", name, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := testConfig(t, nil, "")
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	noToken := good
	noToken.Token = nil
	if !events.IsReason(noToken.Validate(), events.ReasonBadToken) {
		t.Fatal("a config without a token must be refused with bad_token")
	}
	noDevice := good
	noDevice.DeviceKey = nil
	if !events.IsReason(noDevice.Validate(), events.ReasonMalformed) {
		t.Fatal("a config without a device key must be refused")
	}
}

func TestEncodeFieldsAndNewDocumentID(t *testing.T) {
	raw, err := sdk.EncodeFields(map[string]any{"n": 1, "tags": []string{"a"}})
	if err != nil || string(raw) != `{"n":1,"tags":["a"]}` {
		t.Fatalf("got %s, %v", raw, err)
	}
	for _, bad := range []any{nil, map[string]any{}, []int{1}, map[string]any{"a.b": 1}, []byte("nope")} {
		if _, err := sdk.EncodeFields(bad); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("EncodeFields(%v) = %v, want malformed", bad, err)
		}
	}
	a, b := sdk.NewDocumentID(), sdk.NewDocumentID()
	if a == b || !events.ValidName(a) || len(a) != 26 {
		t.Fatalf("ids %q, %q are not fresh valid names", a, b)
	}
}
