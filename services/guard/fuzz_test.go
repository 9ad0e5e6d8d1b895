package guard

import (
	"context"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/capability"
)

// fuzzDevice has fixed keys, so the committed seed corpus
// (testdata/fuzz/FuzzCheck) holds batches the checker accepts.
func fuzzDevice(t testing.TB) *device {
	seed := func(b byte) ed25519.PrivateKey {
		s := make([]byte, ed25519.SeedSize)
		for i := range s {
			s[i] = b
		}
		return ed25519.NewKeyFromSeed(s)
	}
	d := &device{authPriv: seed(1), priv: seed(2), hlc: uint64(testNow.UnixMilli())}
	d.authPub = d.authPriv.Public().(ed25519.PublicKey)
	d.pub = d.priv.Public().(ed25519.PublicKey)
	d.token = mintToken(t, d.authPriv, d.pub, time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), "notes:write")
	return d
}

func newTestChecker(t testing.TB) *checker {
	p, err := LoadPolicy(context.Background(), DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	h := &policyHolder{}
	h.current.Store(p)
	return &checker{verifier: capability.NewVerifier(64), policy: h, rates: newRateWindows(time.Second), maxSkew: DefaultMaxClockSkew}
}

// FuzzCheck drives the decode and check path with arbitrary INGRESS
// bodies: it must never panic, every fact must come out either accepted
// with a valid signature or denied with a stable reason, and no input is
// an internal error.
func FuzzCheck(f *testing.F) {
	d := fuzzDevice(f)
	f.Add(batch([][]byte{d.token}, d.fact(f, "notes", "seed", d.token)))
	f.Add([]byte{})
	c := newTestChecker(f)
	subject := events.IngressFactSubject(d.auth())
	f.Fuzz(func(t *testing.T, data []byte) {
		v := c.check(context.Background(), subject, data, testNow, delivery{})
		if v.retry != nil {
			t.Fatalf("the shipped policy could not decide: %v", v.retry)
		}
		if len(v.accepted)+len(v.denials) == 0 {
			t.Fatal("the checker decided nothing about a message")
		}
		for _, fact := range v.accepted {
			if err := fact.VerifySignature(); err != nil {
				t.Fatalf("accepted a fact whose signature does not verify: %v", err)
			}
			if fact.Authority != d.auth() || v.tokens[fact.TokenHash()] == nil {
				t.Fatalf("accepted fact %s without its authority or token", fact.ID)
			}
		}
		for _, den := range v.denials {
			switch events.Reason(den.GetReason()) {
			case "", events.ReasonInternal:
				t.Fatalf("denial without a stable reason: %q %s", den.GetReason(), den.GetDetail())
			}
		}
	})
}
