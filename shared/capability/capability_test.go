package capability_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/capability"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func keys(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func rights(t testing.TB, ss ...string) []capability.Right {
	t.Helper()
	r, err := capability.ParseRights(ss)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mint(t testing.TB, auth ed25519.PrivateKey, dev ed25519.PublicKey, expiry time.Time, ss ...string) []byte {
	t.Helper()
	tok, err := capability.Mint(auth, dev, rights(t, ss...), expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestParseRight(t *testing.T) {
	for s, want := range map[string]capability.Right{
		"notes:write":          {Collection: "notes", Op: capability.OpWrite},
		"*:sync":               {Collection: "*", Op: capability.OpSync},
		"releases:ota:approve": {Collection: "releases", Op: capability.OpOTAApprove},
	} {
		got, err := capability.ParseRight(s)
		if err != nil || got != want {
			t.Errorf("ParseRight(%q) = %v, %v; want %v", s, got, err, want)
		}
		if got.String() != s {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), s)
		}
	}
	for _, bad := range []string{"notes", "notes:delete", "no tes:read", ":read", "a.b:read"} {
		if _, err := capability.ParseRight(bad); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("ParseRight(%q) = %v, want malformed", bad, err)
		}
	}
}

func TestVerify(t *testing.T) {
	authPub, authPriv := keys(t)
	otherAuthPub, otherAuthPriv := keys(t)
	devPub, _ := keys(t)
	otherDevPub, _ := keys(t)
	expiry := now.Add(time.Hour)

	token := mint(t, authPriv, devPub, expiry, "notes:write", "notes:read", "*:sync")
	narrowed, err := capability.Attenuate(token, rights(t, "notes:read"), now.Add(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	revokedToken := mint(t, authPriv, devPub, expiry, "notes:write")
	revokedIDs, err := capability.RevocationIDs(revokedToken)
	if err != nil || len(revokedIDs) != 1 {
		t.Fatalf("RevocationIDs = %v, %v", revokedIDs, err)
	}
	req := func(right string, at time.Time) capability.Request {
		r, err := capability.ParseRight(right)
		if err != nil {
			t.Fatal(err)
		}
		return capability.Request{Authority: authPub, Device: devPub, Right: r, Now: at}
	}

	v := capability.NewVerifier(0)
	v.Revoke(events.AuthorityIDOf(authPub), revokedIDs[0])
	tokenIDs, _ := capability.RevocationIDs(token)
	v.Revoke(events.AuthorityIDOf(otherAuthPub), tokenIDs...) // another authority cannot revoke it
	cases := []struct {
		name  string
		token []byte
		req   capability.Request
		want  events.Reason // "" means allowed
	}{
		{"granted", token, req("notes:write", now), ""},
		{"granted read", token, req("notes:read", now), ""},
		{"wildcard right", token, req("*:sync", now), ""},
		{"ungranted collection", token, req("tasks:write", now), events.ReasonNoRight},
		{"ungranted op", token, req("notes:snapshot", now), events.ReasonNoRight},
		{"collection sync needs the wildcard", mint(t, authPriv, devPub, expiry, "notes:sync"), req("*:sync", now), events.ReasonNoRight},
		{"expired", token, req("notes:write", expiry.Add(time.Second)), events.ReasonTokenExpired},
		{"attenuated keeps read", narrowed, req("notes:read", now), ""},
		{"attenuated away right", narrowed, req("notes:write", now), events.ReasonNoRight},
		{"attenuated expiry", narrowed, req("notes:read", now.Add(11*time.Minute)), events.ReasonTokenExpired},
		{"other authority's root", mint(t, otherAuthPriv, devPub, expiry, "notes:write"), req("notes:write", now), events.ReasonBadToken},
		{"other device", token, capability.Request{Authority: authPub, Device: otherDevPub, Right: req("notes:write", now).Right, Now: now}, events.ReasonWrongDevice},
		{"revoked", revokedToken, req("notes:write", now), events.ReasonTokenRevoked},
		{"garbage", []byte("not a token"), req("notes:write", now), events.ReasonBadToken},
		{"empty", nil, req("notes:write", now), events.ReasonBadToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Twice: the second run is served from the verified-token cache.
			for range 2 {
				g, err := v.Verify(tc.token, tc.req)
				if got := events.ReasonOf(err); got != tc.want {
					t.Fatalf("Verify = %v (reason %q), want reason %q", err, got, tc.want)
				}
				if err == nil && !g.Device.Equal(devPub) {
					t.Fatalf("grant names device %x, want %x", g.Device, devPub)
				}
			}
		})
	}

	// A token cached as rooted at one authority is not accepted for another.
	if _, err := v.Verify(token, capability.Request{Authority: otherAuthPub, Right: req("notes:write", now).Right, Now: now}); !events.IsReason(err, events.ReasonBadToken) {
		t.Fatalf("verify against another authority = %v, want bad_token", err)
	}
}

// TestEvaluationPastDeadlineIsUnavailable: the datalog deadline is wall
// time, which a starved process misses for no fault of the token. Running
// past it must say unavailable (try again), whether the token is new to
// the verifier (reading its device) or cached (authorizing the request),
// and never a verdict on the token such as token_expired, no_right or
// bad_token. A deadline that has passed already (negative) makes every
// evaluation time out.
func TestEvaluationPastDeadlineIsUnavailable(t *testing.T) {
	authPub, authPriv := keys(t)
	devPub, _ := keys(t)
	token := mint(t, authPriv, devPub, now.Add(time.Hour), "notes:write")
	right := rights(t, "notes:write")[0]
	req := capability.Request{Authority: authPub, Device: devPub, Right: right, Now: now, EvalDeadline: -1}

	v := capability.NewVerifier(0)
	check := func(what string) {
		t.Helper()
		_, err := v.Verify(token, req)
		if !events.IsReason(err, events.ReasonUnavailable) || !errors.Is(err, capability.ErrEvalTimeout) {
			t.Fatalf("%s: Verify past the deadline = %v (reason %q), want unavailable wrapping ErrEvalTimeout", what, err, events.ReasonOf(err))
		}
	}
	check("token new to the verifier")
	if v.Cached() != 0 {
		t.Fatal("a token whose device could not be read in time was cached")
	}
	ok := req
	ok.EvalDeadline = 0
	if _, err := v.Verify(token, ok); err != nil {
		t.Fatalf("Verify with the default deadline: %v", err)
	}
	check("cached token")
}

func TestRevokeEvictsAndCoversAttenuations(t *testing.T) {
	authPub, authPriv := keys(t)
	devPub, _ := keys(t)
	token := mint(t, authPriv, devPub, now.Add(time.Hour), "notes:write")
	child, err := capability.Attenuate(token, nil, now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	v := capability.NewVerifier(0)
	req := capability.Request{Authority: authPub, Device: devPub, Right: capability.Right{Collection: "notes", Op: capability.OpWrite}, Now: now}
	for _, tok := range [][]byte{token, child} {
		if _, err := v.Verify(tok, req); err != nil {
			t.Fatal(err)
		}
	}
	if v.Cached() != 2 {
		t.Fatalf("cache holds %d tokens, want 2", v.Cached())
	}
	ids, _ := capability.RevocationIDs(token)
	v.Revoke(events.AuthorityIDOf(authPub), ids[0])
	if v.Cached() != 0 {
		t.Fatalf("after revoking the parent the cache holds %d tokens, want 0", v.Cached())
	}
	for _, tok := range [][]byte{token, child} {
		if _, err := v.Verify(tok, req); !events.IsReason(err, events.ReasonTokenRevoked) {
			t.Fatalf("Verify after revoke = %v, want token_revoked", err)
		}
	}
}

func TestAttenuateCannotWiden(t *testing.T) {
	authPub, authPriv := keys(t)
	devPub, _ := keys(t)
	token := mint(t, authPriv, devPub, now.Add(time.Minute), "notes:read")
	wider, err := capability.Attenuate(token, rights(t, "notes:read", "notes:write"), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	v := capability.NewVerifier(0)
	req := capability.Request{Authority: authPub, Device: devPub, Right: capability.Right{Collection: "notes", Op: capability.OpWrite}, Now: now}
	if _, err := v.Verify(wider, req); !events.IsReason(err, events.ReasonNoRight) {
		t.Fatalf("attenuation listing an ungranted right: %v, want no_right", err)
	}
	req.Right.Op = capability.OpRead
	req.Now = now.Add(time.Hour)
	if _, err := v.Verify(wider, req); !events.IsReason(err, events.ReasonTokenExpired) {
		t.Fatalf("attenuation with a later expiry: %v, want token_expired", err)
	}
}

func TestInspect(t *testing.T) {
	_, authPriv := keys(t)
	devPub, _ := keys(t)
	token := mint(t, authPriv, devPub, now.Add(time.Hour), "notes:write")
	child, err := capability.Attenuate(token, rights(t, "notes:write"), now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	text, err := capability.Inspect(child)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"authority block",
		`right("notes", "write");`,
		"device(hex:",
		"check if time($t), $t <= 2026-03-01T13:00:00Z;",
		"block 1",
		`check if request("notes:write");`,
		"check if time($t), $t <= 2026-03-01T12:01:00Z;",
		events.TokenHash(child),
	} {
		if !strings.Contains(text, want) {
			t.Errorf("Inspect output lacks %q:\n%s", want, text)
		}
	}
}

func TestRevocationSignature(t *testing.T) {
	_, authPriv := keys(t)
	_, otherPriv := keys(t)
	devPub, _ := keys(t)
	ids, _ := capability.RevocationIDs(mint(t, authPriv, devPub, now.Add(time.Hour), "notes:write"))
	r, err := capability.SignRevocation(authPriv, ids)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	forged := r
	forged.AuthorityKey = otherPriv.Public().(ed25519.PublicKey)
	if err := forged.Verify(); !events.IsReason(err, events.ReasonBadSignature) {
		t.Fatalf("forged revocation: %v, want bad_signature", err)
	}
	if _, err := capability.SignRevocation(authPriv, []string{"zz"}); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("bad id: %v, want malformed", err)
	}
}

func FuzzVerifyDoesNotPanic(f *testing.F) {
	authPub, authPriv := keys(f)
	devPub, _ := keys(f)
	token := mint(f, authPriv, devPub, now.Add(time.Hour), "notes:write")
	f.Add(token)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})
	v := capability.NewVerifier(16)
	f.Fuzz(func(t *testing.T, tok []byte) {
		_, err := v.Verify(tok, capability.Request{Authority: authPub, Device: devPub, Right: capability.Right{Collection: "notes", Op: capability.OpWrite}, Now: now})
		if err != nil && events.ReasonOf(err) == events.ReasonInternal {
			t.Fatalf("Verify: %v", err)
		}
		_, _ = capability.Inspect(tok)
	})
}

func BenchmarkVerifyCached(b *testing.B) {
	authPub, authPriv := keys(b)
	devPub, _ := keys(b)
	token := mint(b, authPriv, devPub, now.Add(time.Hour), "notes:write")
	v := capability.NewVerifier(0)
	req := capability.Request{Authority: authPub, Device: devPub, Right: capability.Right{Collection: "notes", Op: capability.OpWrite}, Now: now}
	for b.Loop() {
		if _, err := v.Verify(token, req); err != nil {
			b.Fatal(err)
		}
	}
}
