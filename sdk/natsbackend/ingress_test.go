package natsbackend_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/natsbackend"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"google.golang.org/protobuf/proto"
)

func newConfig(t *testing.T) sdk.Config {
	t.Helper()
	auth, _, _ := ed25519.GenerateKey(rand.Reader)
	_, device, _ := ed25519.GenerateKey(rand.Reader)
	return sdk.Config{AuthorityKey: auth, DeviceKey: device, Token: []byte("a device token"), StateDir: t.TempDir()}
}

// Writes reach INGRESS as signed fact batches that carry the token once,
// every fact of 40 concurrent writers arrives exactly once, and each batch
// has a Nats-Msg-Id.
func TestWritesArePublishedToIngressAsBatches(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	ctx := t.Context()
	if err := bus.Provision(ctx, h.JS, events.IngressStream()); err != nil {
		t.Fatal(err)
	}
	cfg := newConfig(t)
	b := natsbackend.New(natsbackend.Options{Conn: h.Conn, AcceptedOnly: true})
	if err := b.Initialize(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(ctx) })

	const writers = 40
	var wg sync.WaitGroup
	results := make([]sdk.WriteResult, writers)
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			results[i], errs[i] = b.DocumentStore().Upsert(ctx, "notes", fmt.Sprintf("n%02d", i), map[string]any{"i": i})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	stream, err := h.JS.Stream(ctx, events.StreamIngress)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 || info.State.Msgs > writers {
		t.Fatalf("INGRESS holds %d messages for %d writes", info.State.Msgs, writers)
	}
	want := map[events.FactID]bool{}
	for _, r := range results {
		want[r.Fact] = true
	}
	got := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != events.IngressFactSubject(cfg.Authority()) {
			t.Fatalf("batch on %s, want %s", m.Subject, events.IngressFactSubject(cfg.Authority()))
		}
		if id := m.Header.Get(events.HeaderMsgID); !strings.HasPrefix(id, "batch:") {
			t.Fatalf("batch has Nats-Msg-Id %q", id)
		}
		var batch eventsv1.FactBatch
		if err := proto.Unmarshal(m.Data, &batch); err != nil {
			t.Fatal(err)
		}
		if len(batch.Tokens) != 1 || !bytes.Equal(batch.Tokens[0], cfg.Token) {
			t.Fatalf("batch carries %d tokens, want the device token once", len(batch.Tokens))
		}
		for _, sf := range batch.Facts {
			f, err := events.FactFromProto(sf)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.VerifySignature(); err != nil || f.TokenHash() != events.TokenHash(cfg.Token) || !want[f.ID] {
				t.Fatalf("fact %s: signature %v, token %s, expected %v", f.ID, err, f.TokenHash(), want[f.ID])
			}
			delete(want, f.ID)
			got++
		}
	}
	if got != writers || len(want) != 0 {
		t.Fatalf("INGRESS holds %d of %d facts", got, writers)
	}
}

func TestRequestsWithoutAJournalSayUnavailable(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	b := natsbackend.New(natsbackend.Options{Conn: h.Conn})
	ctx := t.Context()
	if _, err := b.DocumentStore().Get(ctx, "notes", "x"); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("before Initialize: %v, want unavailable", err)
	}
	if err := b.Initialize(ctx, newConfig(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(ctx) })
	if _, err := b.DocumentStore().Get(ctx, "notes", "x"); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("without a journal: %v, want unavailable", err)
	}
	if err := b.SyncEngine().Start(ctx); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("sync engine start without anti-entropy: %v, want unavailable", err)
	}
	if b.SyncEngine().IsSyncing() {
		t.Fatal("an engine that failed to start reports syncing")
	}
	if _, err := b.SyncEngine().ForceSync(ctx, events.PeerID(strings.Repeat("a", events.IDLen))); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("force sync without anti-entropy: %v, want unavailable", err)
	}
	if _, err := b.PeerDiscovery().AddPeer(ctx, "x"); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("add peer x: %v, want malformed", err)
	}
	if _, err := b.PeerDiscovery().AddPeer(ctx, strings.Repeat("a", events.IDLen)); !events.IsReason(err, events.ReasonUnavailable) {
		t.Fatalf("add peer without anti-entropy: %v, want unavailable", err)
	}
}

// Error replies keep the server's reason code.
func TestErrorRepliesBecomeEventsErrors(t *testing.T) {
	h := bustest.Start(t, bus.EmbeddedConfig{})
	cfg := newConfig(t)
	sub, err := h.Conn.Subscribe(events.APISubject(events.JournalProto, events.OpGet, cfg.Authority()), func(m *natsMsg) {
		if m.Header.Get(events.HeaderToken) == "" || m.Header.Get(events.HeaderAuthorityKey) != hex.EncodeToString(cfg.AuthorityKey) {
			return
		}
		reply := newMsg(m.Reply)
		reply.Header.Set(events.HeaderReason, string(events.ReasonNoRight))
		reply.Data = events.EncodeError(events.Errorf(events.ReasonNoRight, "token does not grant read on notes"))
		_ = m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	b := natsbackend.New(natsbackend.Options{Conn: h.Conn})
	ctx := t.Context()
	if err := b.Initialize(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(ctx) })
	_, err = b.DocumentStore().Get(ctx, "notes", "x")
	var e *events.Error
	if !events.IsReason(err, events.ReasonNoRight) || !asError(err, &e) || !strings.Contains(e.Detail, "read on notes") {
		t.Fatalf("got %v, want the server's no_right error", err)
	}
}
