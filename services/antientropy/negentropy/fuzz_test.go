package negentropy

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/factsync/factsync/events"
)

// fuzzSet is n items with ids derived from from..from+n, three to a
// timestamp, so equal timestamps occur and ranges split on id prefixes.
func fuzzSet(from, n int) vector {
	items := make([]Item, n)
	for i := range items {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(from+i))
		items[i] = Item{Timestamp: uint64(1_700_000_000 + (from+i)/3), ID: sha256.Sum256(b[:])}
	}
	return newVector(items)
}

// fuzzFrameLimit is the smallest frame a peer may ask for, so the fuzzer
// reaches the frame overflow paths with small inputs.
const fuzzFrameLimit = MinFrameSizeLimit

// reasonCoded fails the test unless err carries a reason other than
// internal: what a peer sends must be refused as its fault, by name.
func reasonCoded(t *testing.T, err error) {
	t.Helper()
	if r := events.ReasonOf(err); r == events.ReasonInternal || r == "" {
		t.Fatalf("error without a stable reason: %v", err)
	}
}

// exchange runs a real session between two overlapping sets and returns
// every message each side sent, the seeds of both fuzz targets.
func exchange(f *testing.F) (queries, replies [][]byte) {
	in, err := NewInitiator(fuzzSet(0, 400), fuzzFrameLimit)
	if err != nil {
		f.Fatal(err)
	}
	resp, err := NewResponder(fuzzSet(40, 400), fuzzFrameLimit)
	if err != nil {
		f.Fatal(err)
	}
	q, err := in.Initiate()
	if err != nil {
		f.Fatal(err)
	}
	for q != nil {
		queries = append(queries, q)
		r, err := resp.Reconcile(q)
		if err != nil {
			f.Fatal(err)
		}
		replies = append(replies, r)
		if q, _, _, err = in.Reconcile(r); err != nil {
			f.Fatal(err)
		}
	}
	return queries, replies
}

// FuzzResponderReconcile sends arbitrary initiator messages to a
// responder: it never panics, refuses a bad message with a reason, and
// its reply stays within the frame size limit.
func FuzzResponderReconcile(f *testing.F) {
	queries, _ := exchange(f)
	for _, q := range queries {
		f.Add(q)
	}
	f.Add([]byte{ProtocolVersion})
	f.Add([]byte{0x62})
	f.Add([]byte{ProtocolVersion, 0, 0, ModeIDList, 0x8f, 0xff, 0xff, 0xff, 0x7f})
	storage := fuzzSet(40, 400)
	f.Fuzz(func(t *testing.T, query []byte) {
		resp, err := NewResponder(storage, fuzzFrameLimit)
		if err != nil {
			t.Fatal(err)
		}
		reply, err := resp.Reconcile(query)
		if err != nil {
			reasonCoded(t, err)
			return
		}
		if len(reply) == 0 || len(reply) > fuzzFrameLimit {
			t.Fatalf("reply of %d bytes, want 1 to %d", len(reply), fuzzFrameLimit)
		}
	})
}

// FuzzInitiatorReconcile answers a real initiator with arbitrary replies:
// it never panics, refuses a bad reply with a reason, keeps its next
// message within the frame size limit, and reports as "have" only ids
// it holds, each once.
func FuzzInitiatorReconcile(f *testing.F) {
	_, replies := exchange(f)
	for _, r := range replies {
		f.Add(r)
	}
	f.Add([]byte{ProtocolVersion})
	f.Add([]byte{0x6f})
	storage := fuzzSet(0, 400)
	local := map[events.FactID]bool{}
	storage.Iterate(0, storage.Len(), func(it Item, _ int) bool { local[it.ID] = true; return true })
	f.Fuzz(func(t *testing.T, reply []byte) {
		in, err := NewInitiator(storage, fuzzFrameLimit)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := in.Initiate(); err != nil {
			t.Fatal(err)
		}
		next, have, need, err := in.Reconcile(reply)
		if err != nil {
			reasonCoded(t, err)
			return
		}
		if len(next) > fuzzFrameLimit {
			t.Fatalf("next message of %d bytes, over the limit %d", len(next), fuzzFrameLimit)
		}
		seen := map[events.FactID]bool{}
		for _, id := range have {
			if !local[id] {
				t.Fatalf("reports having %s, which it does not hold", id)
			}
		}
		for _, id := range append(have, need...) {
			if seen[id] {
				t.Fatalf("reports %s twice", id)
			}
			seen[id] = true
		}
	})
}
