package natsauth_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var users = []natsauth.User{
	{Name: "guard", Password: "g-secret", Role: natsauth.RoleGuard},
	{Name: "svc", Password: "s-secret", Role: natsauth.RoleServices},
	{Name: "app", Password: "c-secret", Role: natsauth.RoleClient},
	{Name: "peer", Password: "p-secret", Role: natsauth.RolePeer},
}

func startServer(t *testing.T) *server.Server {
	t.Helper()
	configure, err := natsauth.Apply(users...)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1, Configure: configure})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// connect returns a connection as user and a channel of its async errors
// (where the server's permission violations arrive).
func connect(t *testing.T, ns *server.Server, user, password string) (jetstream.JetStream, <-chan error) {
	t.Helper()
	errs := make(chan error, 16)
	nc := bustest.Connect(t, ns.ClientURL(), nats.UserInfo(user, password),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js, errs
}

func TestClientCannotPublishToJournal(t *testing.T) {
	ns := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	guard, _ := connect(t, ns, "guard", "g-secret")
	for _, cfg := range []jetstream.StreamConfig{events.IngressStream(), events.JournalStream()} {
		if _, err := guard.CreateOrUpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	journalSubject := events.JournalSubject("aaaaaaaaaaaaaaaaaaaaaaaaaa", "notes")

	for _, who := range []struct{ user, password string }{{"app", "c-secret"}, {"peer", "p-secret"}, {"svc", "s-secret"}} {
		js, errs := connect(t, ns, who.user, who.password)
		// The server drops a refused publish without a reply, so the
		// publish can only time out; the async error says why.
		pubCtx, pubCancel := context.WithTimeout(ctx, time.Second)
		_, err := js.Publish(pubCtx, journalSubject, []byte("forged fact"), jetstream.WithRetryAttempts(0))
		pubCancel()
		if err == nil {
			t.Fatalf("%s: publish to %s was acknowledged", who.user, journalSubject)
		}
		select {
		case err := <-errs:
			if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(err.Error(), "Permissions Violation") {
				t.Fatalf("%s: async error %v, want a permissions violation", who.user, err)
			}
		case <-ctx.Done():
			t.Fatalf("%s: the server reported no permissions violation", who.user)
		}
	}

	// The client may publish to INGRESS, and the guard to JOURNAL.
	client, _ := connect(t, ns, "app", "c-secret")
	if _, err := client.Publish(ctx, events.IngressFactSubject("aaaaaaaaaaaaaaaaaaaaaaaaaa"), []byte("batch")); err != nil {
		t.Fatalf("client publish to ingress: %v", err)
	}
	if _, err := guard.Publish(ctx, journalSubject, []byte("accepted fact")); err != nil {
		t.Fatalf("guard publish to journal: %v", err)
	}
	journal, err := guard.Stream(ctx, events.StreamJournal)
	if err != nil {
		t.Fatal(err)
	}
	info, err := journal.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("JOURNAL holds %d messages, want only the guard's 1", info.State.Msgs)
	}
}

func TestConfigFileMatchesPermissions(t *testing.T) {
	all := append(append([]natsauth.User{}, users...),
		natsauth.User{Name: "env", Password: "$ENV_PASSWORD", Role: natsauth.RoleClient},
		natsauth.User{Name: "scoped", Password: "x", Role: natsauth.RoleClient, Authorities: []events.AuthorityID{"aaaaaaaaaaaaaaaaaaaaaaaaaa"}},
		natsauth.User{Name: "site", Password: "y", Role: natsauth.RolePeer, Peer: "cccccccccccccccccccccccccc"},
		natsauth.User{Name: "ops", Password: "z", Role: natsauth.RoleOps},
	)
	text, err := natsauth.ConfigFile(all...)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ENV_PASSWORD", "from-env")
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte("port: -1\n"+text), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server does not accept the rendered config: %v\n%s", err, text)
	}
	if len(opts.Users) != len(all) {
		t.Fatalf("config has %d users, want %d", len(opts.Users), len(all))
	}
	for i, u := range opts.Users {
		want := all[i]
		if want.Name == "env" {
			want.Password = "from-env"
		}
		perms, err := want.Permissions()
		if err != nil {
			t.Fatal(err)
		}
		if u.Username != want.Name || u.Password != want.Password {
			t.Errorf("user %d is %s/%s, want %s/%s", i, u.Username, u.Password, want.Name, want.Password)
		}
		if !sameSet(u.Permissions.Publish.Allow, perms.Publish.Allow) || !sameSet(u.Permissions.Publish.Deny, perms.Publish.Deny) ||
			!sameSet(u.Permissions.Subscribe.Allow, perms.Subscribe.Allow) {
			t.Errorf("user %s: config permissions %+v differ from %+v", u.Username, u.Permissions, perms)
		}
	}
}

func sameSet(a, b []string) bool {
	m := func(ss []string) map[string]bool {
		r := map[string]bool{}
		for _, s := range ss {
			r[s] = true
		}
		return r
	}
	return reflect.DeepEqual(m(a), m(b))
}

// TestServicesCannotBypassTheGuard: the services user may use JetStream,
// but not to empty or reconfigure a guarded stream, take INGRESS batches
// from the guard's consumer, or write the guard's revocation and prune-cut
// buckets.
func TestServicesCannotBypassTheGuard(t *testing.T) {
	ns := startServer(t)
	errs := make(chan error, 16)
	nc := bustest.Connect(t, ns.ClientURL(), nats.UserInfo("svc", "s-secret"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	for _, subject := range []string{
		"$JS.API.STREAM.PURGE.JOURNAL",
		"$JS.hub.API.STREAM.UPDATE.JOURNAL",
		"$JS.API.STREAM.MSG.DELETE.DENIED",
		"$JS.API.CONSUMER.MSG.NEXT.INGRESS.guard",
		"$JS.API.CONSUMER.DURABLE.CREATE.INGRESS.thief",
		"$JS.ACK.INGRESS.guard.1.1.1.1.1",
		"$JS.ACK.hub.ACCHASH.INGRESS.guard.1.1.1.1.1.1",
		"$KV." + events.RevocationBucket + ".someauthority.someid",
		"$KV." + events.PrunedFloorBucket + ".someauthority",
	} {
		if err := nc.Publish(subject, nil); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "Permissions Violation") || !strings.Contains(err.Error(), subject) {
				t.Fatalf("%s: %v, want a permissions violation", subject, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("services user published to %s without a permissions violation", subject)
		}
	}
	// Ordinary JetStream use stays allowed.
	if _, err := nc.Request("$JS.API.INFO", nil, 10*time.Second); err != nil {
		t.Fatalf("services user cannot use the JetStream API: %v", err)
	}
}

// TestScopedUsers: a client scoped to an authority watches only that
// authority's changes and writes only its INGRESS and API subjects; a peer
// user announces presence only as its own peer.
func TestScopedUsers(t *testing.T) {
	const mine, theirs = events.AuthorityID("aaaaaaaaaaaaaaaaaaaaaaaaaa"), events.AuthorityID("bbbbbbbbbbbbbbbbbbbbbbbbbb")
	const me, other = events.PeerID("cccccccccccccccccccccccccc"), events.PeerID("dddddddddddddddddddddddddd")
	configure, err := natsauth.Apply(
		natsauth.User{Name: "owner", Password: "o", Role: natsauth.RoleClient, Authorities: []events.AuthorityID{mine}},
		natsauth.User{Name: "site", Password: "s", Role: natsauth.RolePeer, Peer: me},
		natsauth.User{Name: "guard", Password: "g", Role: natsauth.RoleGuard},
	)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1, Configure: configure})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })

	type conn struct {
		nc   *nats.Conn
		errs chan error
	}
	dial := func(user, password string) conn {
		c := conn{errs: make(chan error, 16)}
		c.nc = bustest.Connect(t, ns.ClientURL(), nats.UserInfo(user, password),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { c.errs <- err }))
		return c
	}
	owner, site, guard := dial("owner", "o"), dial("site", "s"), dial("guard", "g")

	// refused requires the server to report a permissions violation for
	// subject (the report arrives asynchronously).
	refused := func(c conn, what, subject string) {
		t.Helper()
		select {
		case err := <-c.errs:
			if !strings.Contains(err.Error(), "Permissions Violation") || !strings.Contains(err.Error(), subject) {
				t.Fatalf("%s %s: %v, want a permissions violation", what, subject, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s %s was not refused", what, subject)
		}
	}
	// delivered requires a message published by from on subject to reach
	// a subscription of to.
	delivered := func(from, to conn, subject string) {
		t.Helper()
		sub, err := to.nc.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		if err := to.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := from.nc.Publish(subject, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(10 * time.Second); err != nil {
			t.Fatalf("publish to %s did not arrive: %v", subject, err)
		}
	}

	for _, subject := range []string{events.ChangesPrefix + ".>", events.ChangesPrefix + "." + string(theirs) + ".>"} {
		if _, err := owner.nc.SubscribeSync(subject); err != nil {
			t.Fatal(err)
		}
		refused(owner, "scoped client subscribe", subject)
	}
	delivered(guard, owner, events.ChangesSubject(mine, "notes", "doc1"))

	for _, subject := range []string{events.IngressFactSubject(theirs), events.APISubject(events.JournalProto, "query", theirs)} {
		if err := owner.nc.Publish(subject, nil); err != nil {
			t.Fatal(err)
		}
		refused(owner, "scoped client publish", subject)
	}
	delivered(owner, guard, events.IngressFactSubject(mine))
	delivered(owner, guard, events.APISubject(events.JournalProto, "query", mine))

	if err := site.nc.Publish(events.PresenceSubject(other), nil); err != nil {
		t.Fatal(err)
	}
	refused(site, "peer publish", events.PresenceSubject(other))
	delivered(site, guard, events.PresenceSubject(me))
}

// TestPrivateInbox: a user with a private inbox gets replies on its own
// prefix and cannot listen to everyone's.
func TestPrivateInbox(t *testing.T) {
	configure, err := natsauth.Apply(
		natsauth.User{Name: "app", Password: "a", Role: natsauth.RoleClient, PrivateInbox: true},
		natsauth.User{Name: "guard", Password: "g", Role: natsauth.RoleGuard},
	)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1, Configure: configure})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	guard := bustest.Connect(t, ns.ClientURL(), nats.UserInfo("guard", "g"))
	if _, err := guard.Subscribe(events.APIPrefix+".>", func(m *nats.Msg) { _ = m.Respond([]byte("answer")) }); err != nil {
		t.Fatal(err)
	}
	if err := guard.Flush(); err != nil {
		t.Fatal(err)
	}

	errs := make(chan error, 4)
	app := bustest.Connect(t, ns.ClientURL(), nats.UserInfo("app", "a"), nats.CustomInboxPrefix(natsauth.InboxPrefix("app")),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	reply, err := app.Request(events.APISubject("journal", "query", "aaaaaaaaaaaaaaaaaaaaaaaaaa"), nil, 10*time.Second)
	if err != nil || string(reply.Data) != "answer" {
		t.Fatalf("request with a private inbox: %v", err)
	}
	if _, err := app.SubscribeSync("_INBOX.>"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "Permissions Violation") {
			t.Fatalf("subscribe to _INBOX.>: %v, want a permissions violation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a private-inbox user may listen to every reply")
	}
}
