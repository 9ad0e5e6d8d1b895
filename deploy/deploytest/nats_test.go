package deploytest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// The permissions files of deploy/, each what `factsync nats-config`
// renders (natsauth.DeployedConfig) for the remote peers it names: the
// base has none, and the dev overlay the two example peers.
var permissionsFiles = []struct {
	file  string
	peers []events.PeerID
}{
	{file: "deploy/k8s/base/nats/permissions.conf"},
	{file: devPermissions, peers: examplePeers},
}

const devPermissions = "deploy/k8s/overlays/dev/permissions.conf"

// examplePeers are the dev overlay's example remote peers.
var examplePeers = []events.PeerID{"examplepeeraaaaaaaaaaaaaaa", "examplepeerbbbbbbbbbbbbbbb"}

// The NATS configs of deploy/: the compose nodes and the Kubernetes nodes
// include permissions.conf from their own directory; compose mounts the
// base's beside cluster.conf in /etc/nats, and the dev overlay replaces
// the base's in the Secret nats-config.
var natsConfigs = []struct {
	file   string
	beside []string // files the server finds in the config's directory
	routes int
	peers  []events.PeerID // the remote peers of its permissions
}{
	{file: "deploy/nats/cluster.conf", beside: []string{"deploy/k8s/base/nats/permissions.conf"}, routes: 3},
	{file: "deploy/k8s/base/nats/nats.conf", routes: 3},
	{file: "deploy/k8s/base/nats/nats.conf", beside: []string{devPermissions}, routes: 3, peers: examplePeers},
}

// TestPermissionsFilesAreRendered: every permissions file of deploy/ is
// exactly what `factsync nats-config` renders from shared/natsauth, so
// the deployed users cannot drift from the embedded servers' model.
func TestPermissionsFilesAreRendered(t *testing.T) {
	for _, f := range permissionsFiles {
		want, err := natsauth.DeployedConfig(f.peers...)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(readRepoFile(t, f.file)); got != want {
			t.Errorf("%s is not what factsync nats-config renders; render it again with the command in its header.\n--- want\n%s", f.file, want)
		}
	}
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
// password per user ("pw-" and the user's name, for the test).
func setNATSEnv(t *testing.T) {
	t.Setenv("SERVER_NAME", "deploytest")
	t.Setenv("JS_MAX_FILE_STORE", "1G")
	users, err := natsauth.DeployedUsers(examplePeers...)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		t.Setenv(strings.TrimPrefix(u.Password, "$"), "pw-"+u.Name)
	}
}

// TestNATSConfigs loads each config with nats-server's own parser.
func TestNATSConfigs(t *testing.T) {
	setNATSEnv(t)
	for _, c := range natsConfigs {
		t.Run(strings.Join(append([]string{c.file}, c.beside...), "+"), func(t *testing.T) {
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
			want := slices.Clone(natsUsers)
			for _, p := range c.peers {
				want = append(want, natsauth.RemotePeerUser(p))
			}
			if !slices.Equal(slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(want))) {
				t.Errorf("%s: users %v, want %v", c.file, names, want)
			}
		})
	}
}

// startDeployedNATS starts a real nats-server with the users and
// permissions of the dev overlay's config (the base's users and the two
// example remote peers), plus an "observer" that may subscribe to
// everything, and returns its client URL.
func startDeployedNATS(t *testing.T) string {
	t.Helper()
	setNATSEnv(t)
	deployed, err := server.ProcessConfigFile(natsConfigPath(t, "deploy/k8s/base/nats/nats.conf", []string{devPermissions}))
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
	return ns.ClientURL()
}

// connectAs connects to url as a deployed user (password "pw-<user>"; see
// setNATSEnv), on the private inbox of a remote peer's user.
func connectAs(t *testing.T, url, user string) *bustest.Watched {
	t.Helper()
	opts := []nats.Option{nats.UserInfo(user, "pw-"+user)}
	if strings.HasPrefix(user, "peer-") {
		opts = append(opts, nats.CustomInboxPrefix(natsauth.InboxPrefix(user)))
	}
	return bustest.ConnectWatched(t, url, opts...)
}

// TestNATSPermissions starts a real nats-server with the deployed users
// and permissions and checks, user by user, which subjects it can publish
// to. An observer sees every message; each probe publish is followed by a
// sentinel on the same connection, so once the sentinel arrives the probe
// has arrived too, unless the server dropped it.
func TestNATSPermissions(t *testing.T) {
	url := startDeployedNATS(t)
	observer := bustest.Connect(t, url, nats.UserInfo("observer", "observer"))
	seen := make(chan *nats.Msg, 64)
	if _, err := observer.ChanSubscribe(">", seen); err != nil {
		t.Fatal(err)
	}
	if err := observer.Flush(); err != nil {
		t.Fatal(err)
	}

	const auth = events.AuthorityID("aaaaaaaaaaaaaaaaaaaaaaaaaa")
	a, b := examplePeers[0], examplePeers[1]
	journal := events.JournalSubject(auth, "notes")
	token := events.TokenSubject(auth, "0123abcd")
	denied := events.DeniedSubject(events.Reason("bad_signature"))
	ingress := events.IngressFactSubject(auth)
	api := events.APISubject("journal", "get", auth)
	svc := events.ServiceSubject("journal", "get", auth)
	peerReq := events.PeerSubject(b, "antientropy", "reconcile")
	changes := events.ChangesSubject(auth, "notes", "doc1")
	checkpoint := events.CheckpointSubject(a)
	jsAPI := "$JS.API.STREAM.INFO.JOURNAL"
	purgeJournal := "$JS.API.STREAM.PURGE." + events.StreamJournal
	ackIngress := "$JS.ACK." + events.StreamIngress + ".guard.1.1.1.0.0"
	sharedInbox := "_INBOX.deploytest.reply"
	servicesInbox := natsauth.ServicesMeshInbox + ".deploytest.reply"
	peerA := natsauth.RemotePeerUser(a)
	peerBInbox := natsauth.InboxPrefix(natsauth.RemotePeerUser(b)) + ".deploytest.reply"

	cases := []struct {
		user  string
		allow []string
		deny  []string
	}{
		{user: "client", allow: []string{ingress, api, peerReq}, deny: []string{journal, token, denied, svc, changes, jsAPI,
			events.DiscoverySubject(a), "$KV." + events.PresenceBucket + "." + string(a), "$KV." + events.StaticPeerBucket + "." + string(a)}},
		{user: "guard", allow: []string{journal, token, denied, svc, jsAPI, servicesInbox, peerBInbox}},
		{user: "services", allow: []string{ingress, peerReq, changes, checkpoint, jsAPI, "$KV.leases.snapshot"},
			deny: []string{journal, token, denied, purgeJournal, ackIngress}},
		{user: "ops", allow: []string{jsAPI}, deny: []string{journal, token, denied, ingress, api}},
		{user: peerA, allow: []string{peerReq, events.PresenceSubject(a), servicesInbox, peerBInbox},
			deny: []string{journal, token, denied, ingress, api, svc, changes, jsAPI, events.PresenceSubject(b), sharedInbox}},
	}
	for _, c := range cases {
		t.Run(c.user, func(t *testing.T) {
			nc := connectAs(t, url, c.user)
			// A remote peer may not publish to _INBOX.>, only to the
			// inboxes of those it answers.
			sentinel := "_INBOX.deploytest.sentinel"
			if c.user == peerA {
				sentinel = natsauth.ServicesMeshInbox + ".deploytest.sentinel"
			}
			for _, subject := range c.allow {
				if !delivered(t, nc.Conn, seen, subject, sentinel) {
					t.Errorf("%s cannot publish to %s", c.user, subject)
				}
			}
			for _, subject := range c.deny {
				if delivered(t, nc.Conn, seen, subject, sentinel) {
					t.Errorf("%s can publish to %s", c.user, subject)
				}
			}
		})
	}
}

var sentinelSeq int

// delivered publishes to subject, then a sentinel message under
// sentinelPrefix on the same connection, and reports whether the observer
// saw the first before the sentinel.
func delivered(t *testing.T, nc *nats.Conn, seen <-chan *nats.Msg, subject, sentinelPrefix string) bool {
	t.Helper()
	sentinelSeq++
	sentinel := fmt.Sprintf("%s.%d", sentinelPrefix, sentinelSeq)
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
			t.Fatalf("the sentinel %s never arrived: the user must be able to publish to %s", sentinel, sentinelPrefix)
		}
	}
}
