package events_test

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/mod/sumdb/tlog"
	"pgregory.net/rapid"
)

// Every event decoder: what an encoder writes decodes to the same value
// (rapid), and whatever bytes arrive either decode to a value that
// survives another round trip or are refused with a reason code (fuzz).
// Nil and empty slices and maps are the same on the wire.

var equateEmpty = cmpopts.EquateEmpty()

func genTime(t *rapid.T, label string) time.Time {
	if rapid.Bool().Draw(t, label+"-zero") {
		return time.Time{}
	}
	// Any instant from 1970 to 2200, to the nanosecond.
	return time.Unix(rapid.Int64Range(0, 7_258_118_400).Draw(t, label+"-s"), rapid.Int64Range(0, 999_999_999).Draw(t, label+"-ns"))
}

func genBytes(t *rapid.T, label string) []byte {
	return rapid.SliceOfN(rapid.Byte(), 0, 80).Draw(t, label)
}

func genKeyID(t *rapid.T, label string) string {
	return events.KeyID(seededKey(t, label).Public().(ed25519.PublicKey))
}

func genOTASignature(t *rapid.T, label string) events.OTASignature {
	return events.OTASignature{KeyID: genKeyID(t, label+"-key"), Sig: genBytes(t, label+"-sig")}
}

func genOTAEvent(t *rapid.T) events.OTAEvent {
	kinds := []events.OTAEventKind{events.OTAEventPolicy, events.OTAEventProposed, events.OTAEventApproved,
		events.OTAEventReadiness, events.OTAEventActivated, events.OTAEventAborted}
	ev := events.OTAEvent{
		Kind:     rapid.SampledFrom(kinds).Draw(t, "kind"),
		At:       genTime(t, "at"),
		Proposal: rapid.StringMatching(`[a-z0-9]{0,64}`).Draw(t, "proposal"),
	}
	switch ev.Kind {
	case events.OTAEventPolicy:
		root := events.OTASignedRoot{Signed: genBytes(t, "signed")}
		for i := range rapid.IntRange(0, 4).Draw(t, "signatures") {
			root.Signatures = append(root.Signatures, genOTASignature(t, "root-"+string(rune('a'+i))))
		}
		ev.Root = &root
	case events.OTAEventProposed:
		ev.ProposalBytes = genBytes(t, "proposal-bytes")
		ev.Proposer = events.DeviceID(genKeyID(t, "proposer"))
	case events.OTAEventApproved:
		ev.Approval = &events.OTAApproval{Proposal: ev.Proposal, Signature: genOTASignature(t, "approval")}
	case events.OTAEventReadiness:
		ev.Readiness = &events.OTAReadiness{
			Proposal:  ev.Proposal,
			Status:    rapid.SampledFrom([]events.OTAReadyStatus{events.OTAReady, events.OTANotReady, events.OTARejected}).Draw(t, "status"),
			Reason:    rapid.String().Draw(t, "reason"),
			Signature: genOTASignature(t, "readiness"),
		}
	case events.OTAEventAborted:
		ev.AbortReason = rapid.SampledFrom([]events.OTAAbortReason{events.OTAAbortTimedOut, events.OTAAbortInsufficientApprovals, events.OTAAbortManual}).Draw(t, "abort")
		ev.Detail = rapid.String().Draw(t, "detail")
	}
	return ev
}

func genActiveVersion(t *rapid.T) events.ActiveVersion {
	return events.ActiveVersion{
		Protocol:    rapid.Uint32Range(1, 1<<31).Draw(t, "protocol"),
		Proposal:    rapid.StringMatching(`[a-z0-9]{0,64}`).Draw(t, "proposal"),
		Package:     rapid.String().Draw(t, "package"),
		Version:     rapid.String().Draw(t, "version"),
		ActivatedAt: genTime(t, "activated"),
	}
}

func genSnapshotSignature(t *rapid.T) events.SnapshotSignature {
	key := seededKey(t, "peer")
	pub := key.Public().(ed25519.PublicKey)
	return events.SnapshotSignature{Peer: events.PeerIDOf(pub), Key: pub, Sig: ed25519.Sign(key, []byte("manifest"))}
}

func genSnapshotEvent(t *rapid.T) events.SnapshotEvent {
	ev := events.SnapshotEvent{
		Kind: rapid.SampledFrom([]events.SnapshotEventKind{events.SnapshotProposed, events.SnapshotApproved, events.SnapshotCommitted}).Draw(t, "kind"),
		At:   genTime(t, "at"),
		ID:   hex.EncodeToString(genBytes(t, "id")),
	}
	switch ev.Kind {
	case events.SnapshotProposed:
		ev.Manifest = genBytes(t, "manifest")
		ev.Signature = genSnapshotSignature(t)
	case events.SnapshotApproved:
		ev.Signature = genSnapshotSignature(t)
	}
	return ev
}

func genSnapshotProgress(t *rapid.T) events.SnapshotProgress {
	p := events.SnapshotProgress{
		Authority: events.AuthorityID(genKeyID(t, "authority")),
		Snapshot:  hex.EncodeToString(genBytes(t, "snapshot")),
		Phase: rapid.SampledFrom([]events.SnapshotPhase{events.SnapshotPhaseFetching, events.SnapshotPhaseVerifying,
			events.SnapshotPhaseLoading, events.SnapshotPhaseSettling, events.SnapshotPhaseComplete, events.SnapshotPhaseFailed}).Draw(t, "phase"),
		Done:  rapid.Int64Min(0).Draw(t, "done"),
		Total: rapid.Int64Min(0).Draw(t, "total"),
	}
	if p.Phase == events.SnapshotPhaseFailed {
		p.Reason = rapid.SampledFrom([]events.Reason{events.ReasonTampered, events.ReasonUnavailable, events.ReasonBadSignature}).Draw(t, "reason")
		p.Detail = rapid.String().Draw(t, "detail")
	}
	return p
}

func genSnapshotPruned(t *rapid.T) events.SnapshotPruned {
	p := events.SnapshotPruned{
		Authority:   events.AuthorityID(genKeyID(t, "authority")),
		Snapshot:    hex.EncodeToString(genBytes(t, "snapshot")),
		CutSeconds:  rapid.Uint32().Draw(t, "cut"),
		Facts:       rapid.Uint64().Draw(t, "facts"),
		Messages:    rapid.Uint64().Draw(t, "messages"),
		Republished: rapid.IntRange(0, 1<<30).Draw(t, "republished"),
	}
	for i := range rapid.IntRange(0, 3).Draw(t, "collections") {
		if p.Below == nil {
			p.Below = map[string]uint64{}
		}
		p.Below[string(rune('a'+i))] = rapid.Uint64().Draw(t, "below")
	}
	return p
}

func genFactID(t *rapid.T, label string) events.FactID {
	var id events.FactID
	copy(id[:], rapid.SliceOfN(rapid.Byte(), len(id), len(id)).Draw(t, label))
	return id
}

func genChange(t *rapid.T) events.Change {
	deleted := rapid.Bool().Draw(t, "deleted")
	doc := events.Document{
		Collection: rapid.StringMatching(`[A-Za-z0-9_-]{1,20}`).Draw(t, "collection"),
		ID:         rapid.StringMatching(`[A-Za-z0-9_-]{1,20}`).Draw(t, "id"),
		Deleted:    deleted,
		Version: events.Version{
			HLC:  events.HLC{WallMillis: rapid.Uint64().Draw(t, "wall"), Logical: rapid.Uint32().Draw(t, "logical")},
			Fact: genFactID(t, "version-fact"),
		},
	}
	if !deleted {
		values := rapid.OneOf(
			rapid.Map(rapid.Int(), func(n int) any { return n }),
			rapid.Map(rapid.String(), func(s string) any { return s }),
			rapid.Map(rapid.SliceOf(rapid.Bool()), func(b []bool) any { return b }),
		)
		doc.Fields = map[string]json.RawMessage{}
		for name, v := range rapid.MapOfN(rapid.StringMatching(`[a-z][a-z0-9 _]{0,12}`), values, 1, 6).Draw(t, "fields") {
			doc.Fields[name], _ = json.Marshal(v)
		}
	}
	return events.Change{
		Authority: events.AuthorityID(genKeyID(t, "authority")),
		Document:  doc,
		Fact:      genFactID(t, "fact").String(),
		Seq:       rapid.Uint64().Draw(t, "seq"),
	}
}

func genPresence(t *rapid.T) events.Presence {
	return events.Presence{Peer: events.PeerID(genKeyID(t, "peer")), IntervalMillis: rapid.Int64().Draw(t, "interval")}
}

func genForkEvidence(t *rapid.T) events.ForkEvidence {
	ev := events.ForkEvidence{
		Peer:    events.PeerID(genKeyID(t, "peer")),
		Witness: events.PeerID(genKeyID(t, "witness")),
		Older:   string(genBytes(t, "older")),
		Newer:   string(genBytes(t, "newer")),
		Detail:  rapid.String().Draw(t, "detail"),
	}
	for i := range rapid.IntRange(0, 5).Draw(t, "proof") {
		var h tlog.Hash
		copy(h[:], rapid.SliceOfN(rapid.Byte(), len(h), len(h)).Draw(t, "hash-"+string(rune('a'+i))))
		ev.Proof = append(ev.Proof, h)
	}
	return ev
}

// roundTrip checks that decode(encode(v)) is v for every v gen draws.
func roundTrip[V any](t *testing.T, gen func(*rapid.T) V, encode func(V) ([]byte, error), decode func([]byte) (V, error)) {
	t.Helper()
	rapid.Check(t, func(t *rapid.T) {
		v := gen(t)
		b, err := encode(v)
		if err != nil {
			t.Fatalf("encode %+v: %v", v, err)
		}
		got, err := decode(b)
		if err != nil {
			t.Fatalf("decode %x: %v", b, err)
		}
		if diff := cmp.Diff(v, got, equateEmpty); diff != "" {
			t.Fatalf("round trip changed the value (-sent +decoded):\n%s", diff)
		}
	})
}

func TestOTAEventRoundTrip(t *testing.T) {
	roundTrip(t, genOTAEvent, events.EncodeOTAEvent, events.DecodeOTAEvent)
}

func TestActiveVersionRoundTrip(t *testing.T) {
	roundTrip(t, genActiveVersion, events.EncodeActiveVersion, events.DecodeActiveVersion)
}

func TestSnapshotEventRoundTrip(t *testing.T) {
	roundTrip(t, genSnapshotEvent, events.EncodeSnapshotEvent, events.DecodeSnapshotEvent)
}

func TestSnapshotPrunedRoundTrip(t *testing.T) {
	roundTrip(t, genSnapshotPruned, events.EncodeSnapshotPruned, events.DecodeSnapshotPruned)
}

func TestSnapshotProgressRoundTrip(t *testing.T) {
	roundTrip(t, genSnapshotProgress, events.EncodeSnapshotProgress, events.DecodeSnapshotProgress)
}

func TestChangeRoundTrip(t *testing.T) {
	roundTrip(t, genChange, events.EncodeChange, events.DecodeChange)
}

func TestPresenceRoundTrip(t *testing.T) {
	roundTrip(t, genPresence, events.EncodePresence, events.DecodePresence)
}

func TestForkEvidenceRoundTrip(t *testing.T) {
	roundTrip(t, genForkEvidence, events.EncodeForkEvidence, events.DecodeForkEvidence)
}

// An event whose kind has no payload, or is unknown, is refused before it
// is written rather than written as an event no ledger can apply.
func TestEncodersRefuseEventsWithoutTheirPayload(t *testing.T) {
	for _, ev := range []events.OTAEvent{
		{Kind: events.OTAEventPolicy},
		{Kind: events.OTAEventApproved},
		{Kind: events.OTAEventReadiness},
		{Kind: "bogus"},
	} {
		if _, err := events.EncodeOTAEvent(ev); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("EncodeOTAEvent(%q without its payload) = %v, want reason malformed", ev.Kind, err)
		}
	}
	if _, err := events.EncodeSnapshotEvent(events.SnapshotEvent{Kind: "bogus"}); !events.IsReason(err, events.ReasonMalformed) {
		t.Errorf("EncodeSnapshotEvent(unknown kind) = %v, want reason malformed", err)
	}
	if _, err := events.EncodeChange(events.Change{Fact: "not hex"}); !events.IsReason(err, events.ReasonMalformed) {
		t.Errorf("EncodeChange(bad fact id) = %v, want reason malformed", err)
	}
}

// Decoders refuse what is not their event: no kind, protocol 0, a change
// with a short fact id or a field that is not JSON, a presence of no peer.
func TestDecodersRefuseIncompleteEvents(t *testing.T) {
	change := events.Change{Authority: "a", Document: events.Document{Collection: "c", ID: "d", Fields: map[string]json.RawMessage{"f": json.RawMessage(`{`)}}, Fact: events.FactID{1}.String()}
	badField, err := events.EncodeChange(change)
	if err != nil {
		t.Fatal(err)
	}
	activeZero, _ := events.EncodeActiveVersion(events.ActiveVersion{})
	progressNoPhase, _ := events.EncodeSnapshotProgress(events.SnapshotProgress{Done: 1})
	presenceNoPeer, _ := events.EncodePresence(events.Presence{IntervalMillis: 5})
	for name, decode := range map[string]func() error{
		"OTA event without a kind":       func() error { _, err := events.DecodeOTAEvent([]byte{0x12, 0x01, 'p'}); return err },
		"snapshot event without a kind":  func() error { _, err := events.DecodeSnapshotEvent([]byte{0x12, 0x01, 'x'}); return err },
		"active version 0":               func() error { _, err := events.DecodeActiveVersion(activeZero); return err },
		"progress without a phase":       func() error { _, err := events.DecodeSnapshotProgress(progressNoPhase); return err },
		"change without a fact id":       func() error { _, err := events.DecodeChange(nil); return err },
		"change with a field not JSON":   func() error { _, err := events.DecodeChange(badField); return err },
		"presence without a peer":        func() error { _, err := events.DecodePresence(presenceNoPeer); return err },
		"prune of no authority":          func() error { _, err := events.DecodeSnapshotPruned([]byte{0x12, 0x01, 'x'}); return err },
		"fork proof hash of 3 bytes":     func() error { _, err := events.DecodeForkEvidence([]byte{0x2a, 0x03, 1, 2, 3}); return err },
		"OTA event that is not protobuf": func() error { _, err := events.DecodeOTAEvent([]byte(`{"kind":"approved"}`)); return err },
	} {
		if err := decode(); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("%s: %v, want reason malformed", name, err)
		}
	}
}

// fuzzDecoder checks a decoder against arbitrary bytes: it refuses with a
// reason code, or what it decodes encodes and decodes to the same value.
func fuzzDecoder[V any](f *testing.F, seeds [][]byte, encode func(V) ([]byte, error), decode func([]byte) (V, error)) {
	f.Helper()
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decode(b)
		if err != nil {
			if events.ReasonOf(err) == events.ReasonInternal {
				t.Fatalf("decode error without a reason code: %v", err)
			}
			return
		}
		again, err := encode(v)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", v, err)
		}
		got, err := decode(again)
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", v, err)
		}
		if diff := cmp.Diff(v, got, equateEmpty); diff != "" {
			t.Fatalf("second round trip changed the value (-first +second):\n%s", diff)
		}
	})
}

// seeds draws n values from gen and encodes them, fixed by rapid's seed
// so every run adds the same corpus.
func seeds[V any](f *testing.F, gen func(*rapid.T) V, encode func(V) ([]byte, error)) [][]byte {
	f.Helper()
	var out [][]byte
	g := rapid.Custom(gen)
	for i := range 4 {
		v := g.Example(i)
		b, err := encode(v)
		if err != nil {
			f.Fatalf("encode seed %+v: %v", v, err)
		}
		out = append(out, b)
	}
	return out
}

func FuzzDecodeOTAEvent(f *testing.F) {
	fuzzDecoder(f, seeds(f, genOTAEvent, events.EncodeOTAEvent), events.EncodeOTAEvent, events.DecodeOTAEvent)
}

func FuzzDecodeActiveVersion(f *testing.F) {
	fuzzDecoder(f, seeds(f, genActiveVersion, events.EncodeActiveVersion), events.EncodeActiveVersion, events.DecodeActiveVersion)
}

func FuzzDecodeSnapshotEvent(f *testing.F) {
	fuzzDecoder(f, seeds(f, genSnapshotEvent, events.EncodeSnapshotEvent), events.EncodeSnapshotEvent, events.DecodeSnapshotEvent)
}

func FuzzDecodeSnapshotProgress(f *testing.F) {
	fuzzDecoder(f, seeds(f, genSnapshotProgress, events.EncodeSnapshotProgress), events.EncodeSnapshotProgress, events.DecodeSnapshotProgress)
}

func FuzzDecodeSnapshotPruned(f *testing.F) {
	fuzzDecoder(f, seeds(f, genSnapshotPruned, events.EncodeSnapshotPruned), events.EncodeSnapshotPruned, events.DecodeSnapshotPruned)
}

func FuzzDecodeChange(f *testing.F) {
	fuzzDecoder(f, seeds(f, genChange, events.EncodeChange), events.EncodeChange, events.DecodeChange)
}

func FuzzDecodePresence(f *testing.F) {
	fuzzDecoder(f, seeds(f, genPresence, events.EncodePresence), events.EncodePresence, events.DecodePresence)
}

func FuzzDecodeForkEvidence(f *testing.F) {
	fuzzDecoder(f, seeds(f, genForkEvidence, events.EncodeForkEvidence), events.EncodeForkEvidence, events.DecodeForkEvidence)
}
