package natsauth_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/natsauth"
)

func TestDeployedUsers(t *testing.T) {
	const a, b = events.PeerID("aaaaaaaaaaaaaaaaaaaaaaaaaa"), events.PeerID("bbbbbbbbbbbbbbbbbbbbbbbbbb")
	users, err := natsauth.DeployedUsers(b, a)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range users {
		names = append(names, u.Name)
		if want := "$" + strings.ToUpper(strings.ReplaceAll(u.Name, "-", "_")) + "_PASSWORD"; u.Password != want {
			t.Errorf("user %s reads its password from %s, want %s", u.Name, u.Password, want)
		}
	}
	want := []string{"client", "guard", "services", "ops", "peer-" + string(a), "peer-" + string(b)}
	if !slices.Equal(names, want) {
		t.Fatalf("users %v, want %v (remote peers sorted by id)", names, want)
	}
	peerA := users[4]
	if peerA.Role != natsauth.RolePeer || peerA.Peer != a || !peerA.PrivateInbox ||
		!slices.Equal(peerA.ReplyTo, []string{"services", "peer-" + string(b)}) {
		t.Errorf("remote peer A's user is %+v, want a peer bound to A on a private inbox, answering the services and B", peerA)
	}
	if natsauth.ServicesMeshInbox != natsauth.InboxPrefix("services") {
		t.Errorf("the services' mesh inbox %s is not the private inbox of the user remote peers answer", natsauth.ServicesMeshInbox)
	}

	for _, bad := range [][]events.PeerID{{"not-a-peer"}, {a, b, a}} {
		if _, err := natsauth.DeployedUsers(bad...); events.ReasonOf(err) != events.ReasonMalformed {
			t.Errorf("DeployedUsers(%v) = %v, want reason malformed", bad, err)
		}
	}
}

// TestDeployedConfigNamesItsCommand: the header's command renders the
// same file, whatever the order the peers were given in.
func TestDeployedConfigNamesItsCommand(t *testing.T) {
	const a, b = events.PeerID("aaaaaaaaaaaaaaaaaaaaaaaaaa"), events.PeerID("bbbbbbbbbbbbbbbbbbbbbbbbbb")
	text, err := natsauth.DeployedConfig(b, a)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "#   factsync nats-config --peer "+string(a)+" --peer "+string(b)+"\n") {
		t.Errorf("the header does not name the command that renders it:\n%s", text)
	}
	again, err := natsauth.DeployedConfig(a, b)
	if err != nil || again != text {
		t.Errorf("the rendering depends on the order of the peers (%v)", err)
	}
	none, err := natsauth.DeployedConfig()
	if err != nil || !strings.Contains(none, "#   factsync nats-config\n") || strings.Contains(none, "role peer") {
		t.Errorf("without remote peers the config names a peer user or another command (%v):\n%s", err, none)
	}
}
