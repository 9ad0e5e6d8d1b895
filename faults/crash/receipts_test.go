package crash

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/faults/internal/stack"
	"github.com/factsync/factsync/services/receipts"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/keys"
	"github.com/factsync/factsync/shared/lease"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// interruptedAppend is what the receipts service logs when it starts on
// a log whose last append a crash stopped before its commit.
const interruptedAppend = "receipts: dropped the end of an append that stopped before its commit"

// checkReceiptsLog checks the receipts log of the server s after a run of
// kills, against journal, JOURNAL's facts in stream order, which no
// longer grows. The log must reach exactly JOURNAL: leaf i is the i-th
// distinct fact of JOURNAL and its receipt verifies offline with the
// peer's key, and there are no other leaves, so no fact was appended
// twice, skipped or reordered across the crashes. Every checkpoint the
// peer published must extend the one before it (a consistency proof from
// the log verifies), under fencing tokens that never go down.
func checkReceiptsLog(ctx context.Context, t *testing.T, s *server, nc *nats.Conn, auth events.AuthorityID, journal []*events.Fact, seed uint64) {
	began := time.Now()
	var order []events.FactID
	seen := map[events.FactID]bool{}
	for _, f := range journal {
		if !seen[f.ID] {
			seen[f.ID] = true
			order = append(order, f.ID)
		}
	}
	if len(order) == 0 {
		t.Fatal("JOURNAL is empty: nothing to check the receipts log against")
	}
	pub, err := keys.LoadPublic(filepath.Join(s.data, "peer.key"), keys.Peer)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := receipts.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	// The services user addresses the receipts service directly, as the
	// guard does when it forwards a client's request.
	source := receipts.RequestSource{Conn: nc, Subject: func(op string) string { return events.ServiceSubject(receipts.Name, op, auth) }}

	var latest []byte
	var size int64
	bustest.Eventually(t, 2*time.Minute, func() bool {
		raw, err := source.Latest(ctx)
		if err != nil {
			return false
		}
		c, err := verifier.OpenCheckpoint(raw)
		if err != nil {
			t.Fatalf("the peer's latest checkpoint: %v", err)
		}
		latest, size = raw, c.Size
		return size >= int64(len(order))
	}, "a checkpoint covering JOURNAL's %d facts (the latest covers %v)", len(order), lazy(func() string { return strconv.FormatInt(size, 10) }))
	if size != int64(len(order)) {
		t.Fatalf("seed %d: the log has %d leaves but JOURNAL %d distinct facts: facts were appended more than once", seed, size, len(order))
	}

	for i, id := range order {
		raw := getReceipt(ctx, t, nc, auth, id)
		var r receipts.Receipt
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		if r.LeafIndex != int64(i) {
			t.Fatalf("seed %d: fact %s is JOURNAL's fact %d but leaf %d of the log", seed, id, i, r.LeafIndex)
		}
		if err := verifier.VerifyReceipt(raw); err != nil {
			t.Fatalf("seed %d: receipt of JOURNAL's fact %d: %v", seed, i, err)
		}
	}

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var chain [][]byte // the published checkpoints, each once, then the latest
	var fence uint64
	published := stack.ReadStream(ctx, t, js, events.StreamReceipts, events.CheckpointSubject(events.PeerIDOf(pub)))
	for _, m := range published {
		token, err := strconv.ParseUint(m.Headers().Get(lease.HeaderToken), 10, 64)
		if err != nil || token < fence {
			t.Fatalf("seed %d: a checkpoint with fencing token %q follows token %d", seed, m.Headers().Get(lease.HeaderToken), fence)
		}
		fence = token
		// A new writer publishes the last checkpoint again at takeover.
		if len(chain) == 0 || !bytes.Equal(chain[len(chain)-1], m.Data()) {
			chain = append(chain, m.Data())
		}
	}
	republished := len(published) - len(chain)
	if len(chain) == 0 || !bytes.Equal(chain[len(chain)-1], latest) {
		chain = append(chain, latest)
	}
	for i := 1; i < len(chain); i++ {
		older, err := verifier.OpenCheckpoint(chain[i-1])
		if err != nil {
			t.Fatalf("seed %d: published checkpoint %d: %v", seed, i-1, err)
		}
		newer, err := verifier.OpenCheckpoint(chain[i])
		if err != nil {
			t.Fatalf("seed %d: published checkpoint %d: %v", seed, i, err)
		}
		if older.Size > newer.Size {
			t.Fatalf("seed %d: published checkpoint %d has %d leaves, the one before it %d", seed, i, newer.Size, older.Size)
		}
		proof, err := source.Consistency(ctx, older.Size, newer.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifier.VerifyConsistency(chain[i-1], chain[i], proof); err != nil {
			t.Fatalf("seed %d: published checkpoints %d and %d: %v", seed, i-1, i, err)
		}
	}
	t.Logf("%d leaves for JOURNAL's %d facts (%d messages), each at its JOURNAL position with a receipt that verifies; %d checkpoints published (%d of them again by a new writer), each consistent with the one before; checked in %s",
		size, len(order), len(journal), len(published), republished, time.Since(began).Round(time.Millisecond))
}

// getReceipt asks the receipts service for the receipt of a fact of auth.
func getReceipt(ctx context.Context, t *testing.T, nc *nats.Conn, auth events.AuthorityID, id events.FactID) []byte {
	t.Helper()
	body, _ := json.Marshal(receipts.GetRequest{FactID: id.String()})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	reply, err := nc.RequestWithContext(rctx, events.ServiceSubject(receipts.Name, receipts.OpGet, auth), body)
	if err != nil {
		t.Fatalf("receipt of fact %s: %v", id, err)
	}
	if e := events.DecodeError(reply.Data); e != nil {
		t.Fatalf("receipt of fact %s: %v", id, e)
	}
	return reply.Data
}

// lazy formats as what its function returns when the message is printed.
type lazy func() string

func (f lazy) String() string { return f() }
