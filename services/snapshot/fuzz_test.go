package snapshot

import (
	"bytes"
	"testing"

	"github.com/factsync/factsync/events"
)

// fuzzErr fails the test unless err carries a reason other than internal.
func fuzzErr(t *testing.T, err error) {
	t.Helper()
	if events.ReasonOf(err) == events.ReasonInternal {
		t.Fatalf("error without a stable reason: %v", err)
	}
}

// FuzzDecodeContent: no snapshot content crashes the decoder, a refusal
// has a reason, and whatever decodes is in the one canonical encoding:
// it re-encodes to the same bytes.
func FuzzDecodeContent(f *testing.F) {
	for _, n := range []int{0, 1, 12} {
		b := buildSigned(f, uint64(n+1), 2*n+2, 3)
		f.Add(b.content)
	}
	f.Add([]byte(contentMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeContent(data)
		if err != nil {
			fuzzErr(t, err)
			return
		}
		if !bytes.Equal(c.Marshal(), data) {
			t.Fatalf("content decodes but re-encodes to other bytes")
		}
	})
}

// FuzzDecodeManifest: the same for manifests.
func FuzzDecodeManifest(f *testing.F) {
	f.Add(buildSigned(f, 1, 10, 3).manifest)
	f.Add([]byte(manifestMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeManifest(data)
		if err != nil {
			fuzzErr(t, err)
			return
		}
		if !bytes.Equal(m.Marshal(), data) {
			t.Fatalf("manifest decodes but re-encodes to other bytes")
		}
	})
}
