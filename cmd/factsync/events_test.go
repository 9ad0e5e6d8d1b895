package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"google.golang.org/protobuf/proto"
)

// decodeCLI writes body to a file, runs `factsync events decode` on it and
// returns the exit code and stdout.
func decodeCLI(t *testing.T, body []byte, args ...string) (int, string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "msg")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := execute(context.Background(), append(append([]string{"-o", "json", "events", "decode"}, args...), file), &out, &errOut)
	return code, out.String()
}

// `factsync events decode` shows the binary events of streams as JSON,
// choosing the decoder by subject, so an operator can read them with the
// NATS CLI's --translate.
func TestEventsDecodeShowsEachKindBySubject(t *testing.T) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	pub := key.Public().(ed25519.PublicKey)
	at := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
	approval, _ := events.EncodeOTAEvent(events.OTAEvent{Kind: events.OTAEventApproved, At: at, Proposal: "p1",
		Approval: &events.OTAApproval{Proposal: "p1", Signature: events.OTASignature{KeyID: events.KeyID(pub), Sig: []byte{1}}}})
	proposed, _ := events.EncodeOTAEvent(events.OTAEvent{Kind: events.OTAEventProposed, At: at, Proposal: "p1",
		ProposalBytes: []byte(`{"package":"factsync","version":"v1.2.3"}`)})
	active, _ := events.EncodeActiveVersion(events.ActiveVersion{Protocol: 2, Version: "v2.0.0"})
	committed, _ := events.EncodeSnapshotEvent(events.SnapshotEvent{Kind: events.SnapshotCommitted, At: at, ID: "s1"})
	presence, _ := events.EncodePresence(events.Presence{Peer: events.PeerIDOf(pub), IntervalMillis: 2000})
	fact, err := events.SignFact(key, &eventsv1.FactBody{AuthorityKey: pub, Hlc: &eventsv1.HLC{WallMillis: 1}, Collection: "notes",
		Document: "d1", TokenHash: make([]byte, 32), Op: &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: []byte(`{"title":"hi"}`)}}})
	if err != nil {
		t.Fatal(err)
	}
	batch, _ := proto.Marshal(&eventsv1.FactBatch{Facts: []*eventsv1.SignedFact{fact.Proto(), {Body: []byte{1}}}, Tokens: [][]byte{[]byte("token")}})
	auth := events.AuthorityIDOf(pub)

	for _, c := range []struct {
		subject string
		body    []byte
		want    []string // JSON fragments the output must contain
	}{
		{events.OTAEventSubject(events.OTAEventApproved, "p1"), approval, []string{`"kind":"approved"`, `"keyid":"` + events.KeyID(pub) + `"`}},
		{events.OTAEventSubject(events.OTAEventProposed, "p1"), proposed, []string{`"kind":"proposed"`, `"proposed":{"package":"factsync","version":"v1.2.3"}`}},
		{events.OTAActiveSubject, active, []string{`"protocol":2`, `"version":"v2.0.0"`}},
		{events.SnapshotEventSubject(events.SnapshotCommitted, auth), committed, []string{`"kind":"committed"`, `"id":"s1"`}},
		{events.PresenceSubject(events.PeerIDOf(pub)), presence, []string{`"interval_ms":2000`}},
		{events.JournalSubject(auth, "notes"), fact.Marshal(), []string{`"id":"` + fact.ID.String() + `"`, `"fields":{"title":"hi"}`}},
		{events.IngressFactSubject(auth), batch, []string{`"collection":"notes"`, `"reason":"malformed"`, `"token_hashes":["` + events.TokenHash([]byte("token")) + `"]`}},
	} {
		code, out := decodeCLI(t, c.body, "--subject", c.subject)
		if code != 0 {
			t.Fatalf("decode %s: exit %d: %s", c.subject, code, out)
		}
		if !json.Valid([]byte(out)) {
			t.Fatalf("decode %s printed no JSON: %s", c.subject, out)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("decode %s: %s lacks %s", c.subject, out, w)
			}
		}
	}
}

// A body that is not the subject's event is refused with its reason code;
// a subject that carries no event is a usage error.
func TestEventsDecodeRefusesWhatItCannotRead(t *testing.T) {
	if code, out := decodeCLI(t, []byte(`{"kind":"approved"}`), "--subject", events.OTAEventSubject(events.OTAEventApproved, "p1")); code != exitFailure || !strings.Contains(out, `"reason":"malformed"`) {
		t.Errorf("JSON on an OTA subject: exit %d, %s; want exit %d with reason malformed", code, out, exitFailure)
	}
	if code, out := decodeCLI(t, nil, "--subject", "fs.api.journal.get.x"); code != exitUsage {
		t.Errorf("request subject: exit %d, %s; want usage", code, out)
	}
	if code, out := decodeCLI(t, nil, "--as", "nonsense"); code != exitUsage {
		t.Errorf("unknown kind: exit %d, %s; want usage", code, out)
	}
}
