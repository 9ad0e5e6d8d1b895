package events_test

import (
	"crypto/ed25519"
	"strings"
	"testing"

	"github.com/factsync/factsync/events"
	"pgregory.net/rapid"
)

func genAuthority(t *rapid.T) events.AuthorityID {
	seed := rapid.SliceOfN(rapid.Byte(), 32, 32).Draw(t, "seed")
	return events.AuthorityIDOf(ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey))
}

func TestSubjectsRoundTrip(t *testing.T) {
	name := rapid.StringMatching(`[A-Za-z0-9_-]{1,40}`)
	rapid.Check(t, func(t *rapid.T) {
		auth := genAuthority(t)
		coll := name.Draw(t, "collection")

		a, err := events.ParseJournalSubject(events.JournalSubject(auth, coll))
		if err != nil || a.Authority != auth || a.Collection != coll {
			t.Fatalf("journal subject: %+v %v", a, err)
		}
		got, err := events.ParseIngressFactSubject(events.IngressFactSubject(auth))
		if err != nil || got != auth {
			t.Fatalf("ingress subject: %v %v", got, err)
		}
		proto, op := name.Draw(t, "proto"), name.Draw(t, "op")
		r, err := events.ParseAPISubject(events.APIPrefix, events.APISubject(proto, op, auth))
		if err != nil || r.Proto != proto || r.Op != op || r.Authority != auth {
			t.Fatalf("api subject: %+v %v", r, err)
		}
		var fact events.FactID
		copy(fact[:], rapid.SliceOfN(rapid.Byte(), 32, 32).Draw(t, "fact"))
		if f, ok := events.ParseDeniedNoticeSubject(events.DeniedNoticeSubject(auth, fact)); !ok || f != fact {
			t.Fatalf("denial notice subject: %v %v", f, ok)
		}
		// A document's change subject is never a denial notice, whatever
		// the collection and document are called.
		if _, ok := events.ParseDeniedNoticeSubject(events.ChangesSubject(auth, coll, fact.String())); ok {
			t.Fatalf("change subject of collection %q parsed as a denial notice", coll)
		}
		peer := events.PeerID(genAuthority(t))
		p, err := events.ParsePeerSubject(events.PeerSubject(peer, proto, op))
		if err != nil || p.Peer != peer || p.Proto != proto || p.Op != op {
			t.Fatalf("peer subject: %+v %v", p, err)
		}
	})
}

func TestSubjectsRejectUnsafeTokens(t *testing.T) {
	good := events.AuthorityIDOf(ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey))
	bad := []string{
		"fs.journal." + string(good) + ".a.b",                    // collection with a dot
		"fs.journal." + string(good) + ".*",                      // wildcard
		"fs.journal." + string(good) + ".>",                      // wildcard
		"fs.journal." + strings.ToUpper(string(good)) + ".notes", // not lowercase base32
		"fs.journal.short.notes",
		"fs.journal." + string(good),
	}
	for _, s := range bad {
		if _, err := events.ParseJournalSubject(s); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("ParseJournalSubject(%q) = %v, want malformed", s, err)
		}
	}
	for _, s := range []string{"fs.api.journal.get", "fs.api.jour*nal.get." + string(good), "fs.svc.journal.get." + string(good)} {
		if _, err := events.ParseAPISubject(events.APIPrefix, s); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("ParseAPISubject(%q) = %v, want malformed", s, err)
		}
	}
	for _, n := range []string{"", "a.b", "a b", "a*", strings.Repeat("x", events.MaxNameLen+1), "é"} {
		if events.ValidName(n) {
			t.Errorf("ValidName(%q) = true", n)
		}
	}
}

func FuzzParseSubjects(f *testing.F) {
	good := events.AuthorityIDOf(ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey))
	f.Add(events.JournalSubject(good, "notes"))
	f.Add(events.APISubject("journal", "get", good))
	f.Add(events.PeerSubject(events.PeerID(good), "antientropy", "reconcile"))
	f.Add("fs..>")
	f.Fuzz(func(t *testing.T, s string) {
		if a, err := events.ParseJournalSubject(s); err == nil && events.JournalSubject(a.Authority, a.Collection) != s {
			t.Fatalf("journal subject %q parsed but does not rebuild", s)
		}
		if r, err := events.ParseAPISubject(events.APIPrefix, s); err == nil && events.APISubject(r.Proto, r.Op, r.Authority) != s {
			t.Fatalf("api subject %q parsed but does not rebuild", s)
		}
		if r, err := events.ParsePeerSubject(s); err == nil && events.PeerSubject(r.Peer, r.Proto, r.Op) != s {
			t.Fatalf("peer subject %q parsed but does not rebuild", s)
		}
	})
}

func TestOnlyInboxesAreReplySubjects(t *testing.T) {
	for subject, want := range map[string]bool{
		"_INBOX.abc123":                      true,
		"_INBOX.abc.1":                       true,
		"_INBOX_peer-2.abc":                  true,
		"_INBOX_services.x":                  true,
		"fs.journal.a.notes":                 false,
		"fs.changes.a.notes.n1":              false,
		"_INBOXES.x":                         false,
		"_INBOX":                             false,
		"_INBOX.>":                           false,
		"_INBOX.*.x":                         false,
		"_INBOX.a b":                         false,
		"x._INBOX.a":                         false,
		"":                                   false,
		"_INBOX.a\nPUB fs.journal.a.notes 0": false,
	} {
		err := events.CheckReplySubject(subject)
		if (err == nil) != want {
			t.Errorf("CheckReplySubject(%q) = %v, want accepted %v", subject, err, want)
		}
		if err != nil && events.ReasonOf(err) != events.ReasonMalformed {
			t.Errorf("CheckReplySubject(%q): reason %s, want malformed", subject, events.ReasonOf(err))
		}
	}
}
