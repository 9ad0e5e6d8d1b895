package guard

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/capability"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// TestEveryRejectionLandsInDenied publishes one bad event per reason and
// one good fact: each bad event lands in DENIED with its code and the
// original subject, and JOURNAL holds only the good fact and its token.
func TestEveryRejectionLandsInDenied(t *testing.T) {
	g := startGuard(t, Config{PolicyDir: policyDir(t, func(cfg map[string]any) {
		cfg["allowed_collections"] = []string{"notes"}
	})})
	expiry := testNow.Add(time.Hour)
	// secrets:write lets the policy, not the token, refuse the secrets fact.
	d := newDevice(t, expiry, "notes:write", "notes:read", "secrets:write")
	auth := d.auth()

	forged := d.fact(t, "notes", "forged", d.token)
	forged.Signature[0] ^= 0xff

	other := newDevice(t, expiry, "notes:write")
	otherAuthToken := mintToken(t, other.authPriv, d.pub, expiry, "notes:write")

	otherDevicePub, _ := genKey(t)
	otherDeviceToken := mintToken(t, d.authPriv, otherDevicePub, expiry, "notes:write")

	expiredToken := mintToken(t, d.authPriv, d.pub, testNow.Add(-time.Minute), "notes:write")

	revokedToken := mintToken(t, d.authPriv, d.pub, expiry, "notes:write")
	ids, err := capability.RevocationIDs(revokedToken)
	if err != nil {
		t.Fatal(err)
	}
	revocation, err := capability.SignRevocation(d.authPriv, ids[:1])
	if err != nil {
		t.Fatal(err)
	}
	reply, err := g.h.Conn.Request(events.APISubject(events.GuardProto, events.OpRevoke, auth), revocation.Marshal(), 10*time.Second)
	if err != nil || reply.Header.Get(events.HeaderReason) != "" {
		t.Fatalf("revoke: %v %s", err, reply.Data)
	}

	readOnly, err := capability.Attenuate(d.token, []capability.Right{{Collection: "notes", Op: capability.OpRead}}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}

	oversized := &eventsv1.SignedFact{Body: make([]byte, events.MaxFactBody+1), Signature: make([]byte, 64)}
	oversizedBatch, _ := proto.Marshal(&eventsv1.FactBatch{Facts: []*eventsv1.SignedFact{oversized}, Tokens: [][]byte{d.token}})

	future := d.factAt(t, "notes", "future", d.token, uint64(testNow.Add(DefaultMaxClockSkew+time.Second).UnixMilli()))

	cases := []struct {
		reason events.Reason
		data   []byte
	}{
		{events.ReasonBadSignature, batch([][]byte{d.token}, forged)},
		{events.ReasonBadToken, batch([][]byte{otherAuthToken}, d.fact(t, "notes", "other-authority", otherAuthToken))},
		{events.ReasonWrongDevice, batch([][]byte{otherDeviceToken}, d.fact(t, "notes", "other-device", otherDeviceToken))},
		{events.ReasonTokenExpired, batch([][]byte{expiredToken}, d.fact(t, "notes", "expired", expiredToken))},
		{events.ReasonTokenRevoked, batch([][]byte{revokedToken}, d.fact(t, "notes", "revoked", revokedToken))},
		{events.ReasonNoRight, batch([][]byte{readOnly}, d.fact(t, "notes", "attenuated", readOnly))},
		{events.ReasonTooLarge, oversizedBatch},
		{events.ReasonMalformed, []byte("\xff\xfenot a protobuf batch")},
		{events.ReasonClockSkew, batch([][]byte{d.token}, future)},
		{events.ReasonPolicyDenied, batch([][]byte{d.token}, d.fact(t, "secrets", "policy", d.token))},
	}
	for _, c := range cases {
		g.publish(t, auth, c.data)
	}
	good := d.fact(t, "notes", "good", d.token)
	g.publish(t, auth, batch([][]byte{d.token}, good))

	eventually(t, 30*time.Second, "every denial in DENIED", func() bool {
		return streamMsgs(t, g.h.JS, events.StreamDenied, events.DeniedPrefix+".>") >= uint64(len(cases))
	})
	eventually(t, 30*time.Second, "the good fact in JOURNAL", func() bool {
		return streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalAuthorityFilter(auth)) >= 1
	})

	got := map[events.Reason]*eventsv1.Denial{}
	for _, m := range readStream(t, g.h.JS, events.StreamDenied, events.DeniedPrefix+".>") {
		var den eventsv1.Denial
		if err := proto.Unmarshal(m.Data(), &den); err != nil {
			t.Fatal(err)
		}
		if m.Subject() != events.DeniedSubject(events.Reason(den.GetReason())) {
			t.Errorf("denial with reason %s on subject %s", den.GetReason(), m.Subject())
		}
		if got[events.Reason(den.GetReason())] != nil {
			t.Errorf("two denials with reason %s: %s", den.GetReason(), den.GetDetail())
		}
		t.Logf("denied %s: %s", den.GetReason(), den.GetDetail())
		got[events.Reason(den.GetReason())] = &den
	}
	for _, c := range cases {
		den := got[c.reason]
		if den == nil {
			t.Errorf("no denial with reason %s", c.reason)
			continue
		}
		if den.GetSubject() != events.IngressFactSubject(auth) || den.GetDetail() == "" || len(den.GetPayload()) == 0 {
			t.Errorf("denial %s: subject %q detail %q payload %d bytes", c.reason, den.GetSubject(), den.GetDetail(), len(den.GetPayload()))
		}
	}
	if len(got) != len(cases) {
		t.Errorf("DENIED holds %d reasons, want %d", len(got), len(cases))
	}

	journal := readStream(t, g.h.JS, events.StreamJournal, events.JournalPrefix+".>")
	if len(journal) != 1 || journal[0].Headers().Get(events.HeaderMsgID) != good.ID.String() {
		t.Fatalf("JOURNAL holds %d facts, want only the good one", len(journal))
	}
	if journal[0].Subject() != events.JournalSubject(auth, "notes") || string(journal[0].Data()) != string(good.Marshal()) {
		t.Fatalf("journal message %s does not carry the good fact", journal[0].Subject())
	}
	tokens := readStream(t, g.h.JS, events.StreamJournal, events.TokenPrefix+".>")
	if len(tokens) != 1 || tokens[0].Subject() != events.TokenSubject(auth, events.TokenHash(d.token)) ||
		tokens[0].Headers().Get(events.HeaderMsgID) != "token:"+events.TokenHash(d.token) {
		t.Fatalf("JOURNAL holds %d tokens, want the good fact's token once", len(tokens))
	}
}

// TestRequests shows the guard forwarding an allowed request with the
// verified device, and answering each refused one with its reason rather
// than letting it time out.
func TestRequests(t *testing.T) {
	g := startGuard(t, Config{RequestTimeout: 5 * time.Second})
	d := newDevice(t, testNow.Add(time.Hour), "notes:read", "*:sync")
	auth := d.auth()

	// A stand-in journal that echoes what the guard forwarded.
	echo := func(m *nats.Msg) {
		b, _ := json.Marshal(map[string]string{"device": m.Header.Get(events.HeaderDevice), "subject": m.Subject, "body": string(m.Data)})
		_ = m.Respond(b)
	}
	for _, subj := range []string{events.ServiceSubject(events.JournalProto, events.OpQuery, auth), events.ServiceSubject("antientropy", "fingerprint", auth),
		events.ServiceSubject(events.AntiEntropyProto, events.AntiEntropyOpAddPeer, auth)} {
		sub, err := g.h.Conn.QueueSubscribe(subj, "journal", echo)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}

	request := func(subject string, body string, token []byte, authKey []byte, extra map[string]string) *nats.Msg {
		t.Helper()
		m := nats.NewMsg(subject)
		m.Data = []byte(body)
		if token != nil {
			m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(token))
		}
		if authKey != nil {
			m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(authKey))
		}
		for k, v := range extra {
			m.Header.Set(k, v)
		}
		reply, err := g.h.Conn.RequestMsg(m, 10*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		return reply
	}
	query := events.APISubject(events.JournalProto, events.OpQuery, auth)

	reply := request(query, `{"collection":"notes"}`, d.token, d.authPub, map[string]string{events.HeaderDevice: "spoofed"})
	var echoed map[string]string
	if err := json.Unmarshal(reply.Data, &echoed); err != nil || reply.Header.Get(events.HeaderReason) != "" {
		t.Fatalf("allowed query: %s (reason %q)", reply.Data, reply.Header.Get(events.HeaderReason))
	}
	if echoed["device"] != string(events.DeviceIDOf(d.pub)) || echoed["body"] != `{"collection":"notes"}` {
		t.Fatalf("forwarded %v, want device %s and the same body", echoed, events.DeviceIDOf(d.pub))
	}

	peerReply := request(events.PeerSubject(g.peer, "antientropy", "fingerprint"), `{}`, d.token, d.authPub,
		map[string]string{events.HeaderAuthority: string(auth)})
	if err := json.Unmarshal(peerReply.Data, &echoed); err != nil || echoed["subject"] != events.ServiceSubject("antientropy", "fingerprint", auth) {
		t.Fatalf("peer sync request: %s", peerReply.Data)
	}

	// Adding a static peer is for this peer's clients (with sync), never
	// for another peer.
	addPeer := request(events.APISubject(events.AntiEntropyProto, events.AntiEntropyOpAddPeer, auth), `{}`, d.token, d.authPub, nil)
	if err := json.Unmarshal(addPeer.Data, &echoed); err != nil || echoed["subject"] != events.ServiceSubject(events.AntiEntropyProto, events.AntiEntropyOpAddPeer, auth) {
		t.Fatalf("a client's add_peer: %s", addPeer.Data)
	}
	addPeer = request(events.PeerSubject(g.peer, events.AntiEntropyProto, events.AntiEntropyOpAddPeer), `{}`, d.token, d.authPub,
		map[string]string{events.HeaderAuthority: string(auth)})
	if got := addPeer.Header.Get(events.HeaderReason); got != string(events.ReasonNoRight) {
		t.Fatalf("a peer's add_peer: %s (reason %q), want no_right", addPeer.Data, got)
	}

	other := newDevice(t, testNow.Add(time.Hour), "notes:read")
	for _, c := range []struct {
		name    string
		subject string
		body    string
		token   []byte
		authKey []byte
		want    events.Reason
	}{
		{"no token", query, `{"collection":"notes"}`, nil, d.authPub, events.ReasonBadToken},
		{"no authority key", query, `{"collection":"notes"}`, d.token, nil, events.ReasonBadToken},
		{"key of another authority", query, `{"collection":"notes"}`, d.token, other.authPub, events.ReasonBadToken},
		{"token of another authority", query, `{"collection":"notes"}`, other.token, d.authPub, events.ReasonBadToken},
		{"ungranted collection", query, `{"collection":"tasks"}`, d.token, d.authPub, events.ReasonNoRight},
		{"bad collection name", query, `{"collection":"a.b"}`, d.token, d.authPub, events.ReasonMalformed},
		{"unknown protocol", events.APISubject("mystery", "op", auth), `{}`, d.token, d.authPub, events.ReasonNotFound},
		{"no service answering", events.APISubject(events.JournalProto, events.OpCount, auth), `{"collection":"notes"}`, d.token, d.authPub, events.ReasonUnavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			reply := request(c.subject, c.body, c.token, c.authKey, nil)
			e := events.DecodeError(reply.Data)
			if e == nil || e.Reason != c.want || reply.Header.Get(events.HeaderReason) != string(c.want) {
				t.Fatalf("reply %s (header %q), want reason %s", reply.Data, reply.Header.Get(events.HeaderReason), c.want)
			}
		})
	}
}

// TestPolicyReload changes the policy's data on disk; the guard applies it
// at the next reload tick.
func TestPolicyReload(t *testing.T) {
	dir := policyDir(t, func(map[string]any) {})
	g := startGuard(t, Config{PolicyDir: dir, PolicyReloadInterval: time.Second})
	d := newDevice(t, testNow.Add(time.Hour), "notes:write")

	g.publish(t, d.auth(), batch([][]byte{d.token}, d.fact(t, "notes", "before", d.token)))
	eventually(t, 20*time.Second, "the fact accepted", func() bool {
		return streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalPrefix+".>") == 1
	})

	writePolicy(t, dir, func(cfg map[string]any) { cfg["registration"] = "closed" })
	ctx := context.Background()
	eventually(t, 20*time.Second, "a reload refusing unregistered authorities", func() bool {
		g.clock.Advance(time.Second)
		in := PolicyInput{Kind: "fact", Authority: d.auth(), Collection: "notes", Op: "write", Size: 1}
		return events.IsReason(g.currentPolicy().Decide(ctx, &in), events.ReasonPolicyDenied)
	})
	g.publish(t, d.auth(), batch([][]byte{d.token}, d.fact(t, "notes", "after", d.token)))
	eventually(t, 20*time.Second, "the fact denied", func() bool {
		return streamMsgs(t, g.h.JS, events.StreamDenied, events.DeniedSubject(events.ReasonPolicyDenied)) == 1
	})
}

// TestTraceContextReachesJournal: the W3C trace context of an INGRESS
// message travels on to the JOURNAL messages of its facts.
func TestTraceContextReachesJournal(t *testing.T) {
	g := startGuard(t, Config{})
	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	m := nats.NewMsg(events.IngressFactSubject(d.auth()))
	m.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	m.Data = batch([][]byte{d.token}, d.fact(t, "notes", "traced", d.token))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.h.JS.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the fact in JOURNAL", func() bool {
		return streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalPrefix+".>") == 1
	})
	for _, filter := range []string{events.JournalPrefix + ".>", events.TokenPrefix + ".>"} {
		got := readStream(t, g.h.JS, events.StreamJournal, filter)[0].Headers().Get("traceparent")
		if !strings.Contains(got, traceID) {
			t.Errorf("%s message has traceparent %q, want trace %s", filter, got, traceID)
		}
	}
}

// TestBrokenPolicyRetriesInsteadOfDenying: when the policy cannot decide
// (here it yields a string instead of a set), the fact is neither denied
// nor accepted; INGRESS keeps redelivering it until a fixed policy is
// loaded, which then accepts it.
func TestBrokenPolicyRetriesInsteadOfDenying(t *testing.T) {
	dir := policyDir(t, func(map[string]any) {})
	broken := []byte("package factsync.guard\n\ndeny := \"not a set\"\n")
	if err := os.WriteFile(filepath.Join(dir, "guard.rego"), broken, 0o644); err != nil {
		t.Fatal(err)
	}
	g := startGuard(t, Config{PolicyDir: dir, PolicyReloadInterval: time.Second})
	d := newDevice(t, testNow.Add(time.Hour), "notes:write")
	g.publish(t, d.auth(), batch([][]byte{d.token}, d.fact(t, "notes", "waits", d.token)))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eventually(t, 20*time.Second, "the message redelivered", func() bool {
		c, err := g.h.JS.Consumer(ctx, events.StreamIngress, Name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumRedelivered > 0
	})
	if n := streamMsgs(t, g.h.JS, events.StreamDenied, events.DeniedPrefix+".>"); n != 0 {
		t.Fatalf("a fact was denied because the policy could not decide (%d denials)", n)
	}
	if n := streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalPrefix+".>"); n != 0 {
		t.Fatalf("a fact was accepted without a policy decision")
	}

	writePolicy(t, dir, func(map[string]any) {})
	eventually(t, 20*time.Second, "the fact accepted under the fixed policy", func() bool {
		g.clock.Advance(time.Second)
		return streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalPrefix+".>") == 1
	})
}
