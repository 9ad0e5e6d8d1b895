package deploytest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// The NATS configs of deploy/: the compose nodes and the Kubernetes nodes
// share deploy/k8s/base/nats/permissions.conf, which compose mounts beside
// cluster.conf in /etc/nats.
var natsConfigs = []struct {
	file   string
	beside []string // files the server finds in the config's directory
	routes int
}{
	{file: "deploy/nats/cluster.conf", beside: []string{"deploy/k8s/base/nats/permissions.conf"}, routes: 3},
	{file: "deploy/k8s/base/nats/nats.conf", routes: 3},
}

// natsConfigPath lays out a config as the server sees it and returns its path.
func natsConfigPath(t *testing.T, file string, beside []string) string {
	t.Helper()
	if len(beside) == 0 {
		return repoPath(t, file)
	}
	dir := t.TempDir()
	for _, f := range append([]string{file}, beside...) {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), readRepoFile(t, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, filepath.Base(file))
}

// setNATSEnv sets what the configs read from the environment, with one
// password per user (the user's name, for the test).
func setNATSEnv(t *testing.T) {
	t.Setenv("SERVER_NAME", "deploytest")
	t.Setenv("JS_MAX_FILE_STORE", "1G")
	t.Setenv("CLIENT_PASSWORD", "pw-client")
	t.Setenv("PEER_PASSWORD", "pw-peer")
	t.Setenv("GUARD_PASSWORD", "pw-guard")
	t.Setenv("SERVICES_PASSWORD", "pw-services")
	t.Setenv("OPS_PASSWORD", "pw-ops")
}

// TestNATSConfigs loads each config with nats-server's own parser.
func TestNATSConfigs(t *testing.T) {
	setNATSEnv(t)
	for _, c := range natsConfigs {
		t.Run(c.file, func(t *testing.T) {
			opts, err := server.ProcessConfigFile(natsConfigPath(t, c.file, c.beside))
			if err != nil {
				t.Fatalf("nats-server rejects %s: %v", c.file, err)
			}
			if !opts.JetStream || !opts.SyncAlways {
				t.Errorf("%s: JetStream %v, sync_interval always %v; want both (fsync before ack)", c.file, opts.JetStream, opts.SyncAlways)
			}
			if len(opts.Routes) != c.routes || opts.Cluster.Name == "" {
				t.Errorf("%s: cluster %q with %d routes, want a named cluster of %d", c.file, opts.Cluster.Name, len(opts.Routes), c.routes)
			}
			if opts.MaxPayload < events.MaxIngressMessage {
				t.Errorf("%s: max_payload %d is below one INGRESS batch (%d)", c.file, opts.MaxPayload, events.MaxIngressMessage)
			}
			var names []string
			for _, u := range opts.Users {
				names = append(names, u.Username)
				if u.Password == "" || u.Password[0] == '$' {
					t.Errorf("%s: user %s has no password from the environment", c.file, u.Username)
				}
			}
			if !slices.Equal(slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(natsUsers))) {
				t.Errorf("%s: users %v, want %v", c.file, names, natsUsers)
			}
		})
	}
}

// TestNATSPermissions starts a real nats-server with the deployed users
// and permissions and checks, user by user, which subjects it can publish
// to. An observer sees every message; each probe publish is followed by a
// sentinel on the same connection, so once the sentinel arrives the probe
// has arrived too, unless the server dropped it.
func TestNATSPermissions(t *testing.T) {
	setNATSEnv(t)
	deployed, err := server.ProcessConfigFile(repoPath(t, "deploy/k8s/base/nats/nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{
		StoreDir: t.TempDir(),
		Port:     -1,
		Configure: func(o *server.Options) {
			o.Users = append(slices.Clone(deployed.Users), &server.User{Username: "observer", Password: "observer"})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)

	observer, err := nats.Connect(ns.ClientURL(), nats.UserInfo("observer", "observer"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(observer.Close)
	seen := make(chan *nats.Msg, 64)
	if _, err := observer.ChanSubscribe(">", seen); err != nil {
		t.Fatal(err)
	}
	if err := observer.Flush(); err != nil {
		t.Fatal(err)
	}

	const auth = events.AuthorityID("aaaaaaaaaaaaaaaaaaaaaaaaaa")
	const peer = events.PeerID("peerpeerpeerpeer")
	journal := events.JournalSubject(auth, "notes")
	token := events.TokenSubject(auth, "0123abcd")
	denied := events.DeniedSubject(events.Reason("bad_signature"))
	ingress := events.IngressFactSubject(auth)
	api := events.APISubject("journal", "get", auth)
	svc := events.ServiceSubject("journal", "get", auth)
	peerReq := events.PeerSubject(peer, "antientropy", "reconcile")
	changes := events.ChangesSubject(auth, "notes", "doc1")
	checkpoint := events.CheckpointSubject(peer)
	jsAPI := "$JS.API.STREAM.INFO.JOURNAL"

	cases := []struct {
		user  string
		allow []string
		deny  []string
	}{
		{user: "client", allow: []string{ingress, api}, deny: []string{journal, token, denied, svc, peerReq, changes, jsAPI}},
		{user: "peer", allow: []string{ingress, api, peerReq, events.PresenceSubject(peer)}, deny: []string{journal, token, denied, svc, changes, jsAPI}},
		{user: "guard", allow: []string{journal, token, denied, svc, jsAPI}, deny: []string{ingress, changes}},
		{user: "services", allow: []string{ingress, peerReq, changes, checkpoint, jsAPI, "$KV.leases.snapshot"}, deny: []string{journal, token, denied}},
		{user: "ops", allow: []string{jsAPI}, deny: []string{journal, token, denied, ingress, api}},
	}
	for _, c := range cases {
		t.Run(c.user, func(t *testing.T) {
			nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(c.user, "pw-"+c.user), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
			if err != nil {
				t.Fatalf("connect as %s: %v", c.user, err)
			}
			defer nc.Close()
			for _, subject := range c.allow {
				if !delivered(t, nc, seen, subject) {
					t.Errorf("%s cannot publish to %s", c.user, subject)
				}
			}
			for _, subject := range c.deny {
				if delivered(t, nc, seen, subject) {
					t.Errorf("%s can publish to %s", c.user, subject)
				}
			}
		})
	}
}

var sentinelSeq int

// delivered publishes to subject, then a sentinel inbox message on the
// same connection, and reports whether the observer saw the first before
// the sentinel.
func delivered(t *testing.T, nc *nats.Conn, seen <-chan *nats.Msg, subject string) bool {
	t.Helper()
	sentinelSeq++
	sentinel := fmt.Sprintf("_INBOX.deploytest.sentinel.%d", sentinelSeq)
	if err := nc.Publish(subject, []byte("probe")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(sentinel, nil); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	got := false
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-seen:
			switch m.Subject {
			case subject:
				got = true
			case sentinel:
				return got
			}
		case <-deadline:
			t.Fatalf("the sentinel %s never arrived: every user must be able to publish to _INBOX.>", sentinel)
		}
	}
}
