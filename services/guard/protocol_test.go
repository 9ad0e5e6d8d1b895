package guard

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go"
)

// After an OTA hard fork activates protocol 2, the guard refuses peer
// requests from peers that still speak protocol 1, with reason
// protocol_version, and forwards those that speak 2, and OTA requests
// from either.
func TestPeerBelowActiveProtocolIsRefused(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	if _, err := h.JS.CreateStream(ctx, events.OTAStream()); err != nil {
		t.Fatal(err)
	}
	active, _ := events.EncodeActiveVersion(events.ActiveVersion{Protocol: 2, Package: "factsync", Version: "2.0.0", ActivatedAt: testNow})
	if _, err := h.JS.Publish(ctx, events.OTAActiveSubject, active); err != nil {
		t.Fatal(err)
	}
	peer, _ := runGuard(t, h, clock.NewFake(testNow), New(Config{RequestTimeout: 5 * time.Second}))

	d := newDevice(t, testNow.Add(time.Hour), "*:sync")
	auth := d.auth()
	sub, err := h.Conn.QueueSubscribe(events.ServiceSubject("antientropy", "open", auth), "antientropy", func(m *nats.Msg) { _ = m.Respond([]byte(`{}`)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	// OTA is not a sync protocol: a peer left behind must still learn of
	// the release and fetch it.
	otaSub, err := h.Conn.QueueSubscribe(events.ServiceSubject(events.OTAProto, events.OTAOpLog, auth), "ota", func(m *nats.Msg) { _ = m.Respond([]byte(`{}`)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = otaSub.Unsubscribe() })

	askProto := func(proto, op, protocol string) string {
		m := nats.NewMsg(events.PeerSubject(peer, proto, op))
		m.Data = []byte(`{}`)
		m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(d.token))
		m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(d.authPub))
		m.Header.Set(events.HeaderAuthority, string(auth))
		m.Header.Set(events.HeaderProtocolVersion, protocol)
		reply, err := h.Conn.RequestMsg(m, 10*time.Second)
		if err != nil {
			t.Fatalf("peer request: %v", err)
		}
		return reply.Header.Get(events.HeaderReason)
	}
	ask := func(protocol string) string { return askProto("antientropy", "open", protocol) }
	eventually(t, 20*time.Second, "the guard to follow protocol 2", func() bool { return ask("1") == string(events.ReasonProtocolVersion) })
	if reason := ask("2"); reason != "" {
		t.Fatalf("a peer at the active protocol was refused: %s", reason)
	}
	if reason := askProto(events.OTAProto, events.OTAOpLog, "1"); reason != "" {
		t.Fatalf("a peer below the active protocol was refused the OTA log: %s", reason)
	}
}
