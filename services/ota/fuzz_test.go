package ota

import (
	"bytes"
	"testing"

	"github.com/factsync/factsync/events"
)

// FuzzDecodeProposal: no proposal bytes crash the decoder, a refusal is
// malformed, and what decodes is in its one canonical encoding, so a
// proposal cannot be proposed twice under two ids.
func FuzzDecodeProposal(f *testing.F) {
	fl := newFleet()
	f.Add(EncodeProposal(proposal(fl.trusted(f), "v2.0.0")))
	f.Add([]byte(`{"package":"factsync","version":"v2.0.0","kind":"soft"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeProposal(b)
		if err != nil {
			if !events.IsReason(err, events.ReasonMalformed) {
				t.Fatalf("refused without malformed: %v", err)
			}
			return
		}
		if !bytes.Equal(EncodeProposal(p), b) {
			t.Fatalf("%s decodes but encodes as %s", b, EncodeProposal(p))
		}
	})
}

// FuzzParseRoot: no signed root policy crashes the parser, and a refusal
// is malformed.
func FuzzParseRoot(f *testing.F) {
	fl := newFleet()
	f.Add(mustSign(f, fl.rootPolicy(1), fl.root[0]).Signed)
	f.Add([]byte(`{"type":"root","version":1}`))
	f.Fuzz(func(t *testing.T, signed []byte) {
		if _, err := ParseRoot(events.OTASignedRoot{Signed: signed}); err != nil && !events.IsReason(err, events.ReasonMalformed) {
			t.Fatalf("refused without malformed: %v", err)
		}
	})
}
