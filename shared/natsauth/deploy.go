package natsauth

import (
	"slices"
	"strings"

	"github.com/factsync/factsync/events"
)

// The users of a deployed peer's NATS cluster (deploy/). Its own services
// connect as "guard" and "services", applications as "client", operators
// as "ops", and each remote peer as a user of its own, RemotePeerUser.
const (
	clientUser   = "client"
	guardUser    = "guard"
	servicesUser = "services"
	opsUser      = "ops"
)

// ServicesMeshInbox is the reply prefix a deployed peer's services use for
// their requests to remote peers (`factsync serve --mesh-inbox-prefix`):
// a remote peer's user may answer on it, while the shared _INBOX.>, which
// carries the replies of every local client and JetStream API call, stays
// closed to remote peers.
var ServicesMeshInbox = InboxPrefix(servicesUser)

// RemotePeerUser is the name of the user a remote peer connects as (its
// leafnode link, or a hostile peer's own client): "peer-<id>". The remote
// peer's services must send their requests with the reply prefix
// InboxPrefix(RemotePeerUser(id)).
func RemotePeerUser(id events.PeerID) string { return "peer-" + string(id) }

// PasswordVariable is the config variable a deployed nats-server reads a
// user's password from: $CLIENT_PASSWORD for "client",
// $PEER_<ID>_PASSWORD for a remote peer. nats-server resolves it from its
// environment, so no password is written in a config file.
func PasswordVariable(user string) string {
	return "$" + strings.ToUpper(strings.ReplaceAll(user, "-", "_")) + "_PASSWORD"
}

// DeployedUsers are the users of a deployed peer that remote peers
// (events.PeerID) may connect to: one per role, with the roles'
// permissions unscoped, and one per remote peer, scoped as a mesh hub
// scopes its leaf users (shared/mesh). A remote peer may receive only the
// requests addressed to it, announce presence only as itself, receive
// replies only on its private inbox, and answer only the other remote
// peers and this peer's services (ServicesMeshInbox). Every password is
// its PasswordVariable. A remote peer named twice, or an id that is not a
// PeerID, is refused with reason malformed.
func DeployedUsers(remotes ...events.PeerID) ([]User, error) {
	ids := slices.Sorted(slices.Values(remotes))
	for i, id := range ids {
		if err := id.Validate(); err != nil {
			return nil, err
		}
		if i > 0 && ids[i-1] == id {
			return nil, events.Errorf(events.ReasonMalformed, "remote peer %s is named twice", id)
		}
	}
	users := []User{
		{Name: clientUser, Role: RoleClient},
		{Name: guardUser, Role: RoleGuard},
		{Name: servicesUser, Role: RoleServices},
		{Name: opsUser, Role: RoleOps},
	}
	for _, id := range ids {
		replyTo := []string{servicesUser}
		for _, other := range ids {
			if other != id {
				replyTo = append(replyTo, RemotePeerUser(other))
			}
		}
		users = append(users, User{Name: RemotePeerUser(id), Role: RolePeer, Peer: id, PrivateInbox: true, ReplyTo: replyTo})
	}
	for i := range users {
		users[i].Password = PasswordVariable(users[i].Name)
	}
	return users, nil
}

// DeployedConfig renders DeployedUsers as the permissions.conf of deploy/
// (what `factsync nats-config` prints): a header naming the command that
// reproduces it, then the authorization block.
func DeployedConfig(remotes ...events.PeerID) (string, error) {
	users, err := DeployedUsers(remotes...)
	if err != nil {
		return "", err
	}
	block, err := ConfigFile(users...)
	if err != nil {
		return "", err
	}
	command := "factsync nats-config"
	for _, u := range users {
		if u.Role == RolePeer {
			command += " --peer " + string(u.Peer)
		}
	}
	var b strings.Builder
	b.WriteString(`# The NATS users of a factsync peer and what each may publish and
# subscribe to. Generated from shared/natsauth, the model the embedded
# servers use too; do not edit. Render it again with
#
#   ` + command + `
#
# deploy/deploytest fails when this file differs from what that renders.
# Each remote peer has a user of its own, peer-<id>: it receives only the
# requests addressed to it and the replies on its own inbox
# (_INBOX_peer-<id>), and announces presence only as itself.
#
# Passwords are config variables that nats-server reads from its
# environment (Kubernetes: the Secrets factsync-nats-credentials and
# factsync-nats-peer-credentials; compose: the environment and
# nats/peers.env); they never live in this file. See docs/operations.md,
# "NATS users and permissions".

`)
	b.WriteString(block)
	return b.String(), nil
}
