package guard

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
)

// TestVerifiedSignatureIsTrustedOnlyWithTheSameBytes: the verify operation
// checks every signature of a batch and remembers those that verified. A
// fact verified so is accepted from INGRESS; a copy of its body with other
// signature bytes (same FactID) is verified again and denied, and a batch
// holding a forged fact is refused by the verify operation with its reason.
func TestVerifiedSignatureIsTrustedOnlyWithTheSameBytes(t *testing.T) {
	g := startGuard(t, Config{})
	d := newDevice(t, testNow.Add(time.Hour), "*:write")
	good := d.fact(t, "notes", "a", d.token)
	forged := *good
	forged.Signature = append([]byte(nil), good.Signature...)
	forged.Signature[0] ^= 1

	verify := func(facts ...*events.Fact) (*nats.Msg, error) {
		return g.h.Conn.Request(events.ServiceSubject(events.GuardProto, events.GuardOpVerify, d.auth()), batch(nil, facts...), 10*time.Second)
	}
	reply, err := verify(good)
	if err != nil {
		t.Fatal(err)
	}
	var ok events.GuardVerifyReply
	if err := json.Unmarshal(reply.Data, &ok); err != nil || ok.Verified != 1 {
		t.Fatalf("verify of a good fact: %s, %v", reply.Data, err)
	}
	reply, err = verify(good, &forged)
	if err != nil {
		t.Fatal(err)
	}
	if reason := reply.Header.Get(events.HeaderReason); reason != string(events.ReasonBadSignature) {
		t.Fatalf("verify of a batch with a forged signature: reason %q (%s), want bad_signature", reason, reply.Data)
	}

	g.publish(t, d.auth(), batch([][]byte{d.token}, &forged))
	eventually(t, 10*time.Second, "the forged copy denied", func() bool {
		return streamMsgs(t, g.h.JS, events.StreamDenied, events.DeniedSubject(events.ReasonBadSignature)) == 1
	})
	if n := streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalAuthorityFilter(d.auth())); n != 0 {
		t.Fatalf("JOURNAL holds %d facts after the forged copy, want none", n)
	}
	g.publish(t, d.auth(), batch([][]byte{d.token}, good))
	eventually(t, 10*time.Second, "the verified fact accepted", func() bool {
		return streamMsgs(t, g.h.JS, events.StreamJournal, events.JournalAuthorityFilter(d.auth())) == 1
	})
}
