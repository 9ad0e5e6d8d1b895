// Package natsauth defines the nats-server users of a factsync peer and what
// each may publish and subscribe, so that the boundary the guard enforces in
// code also holds at the server: a client that skips the SDK, or a remote
// peer, can publish only to ingress and request subjects, and only the
// guard's user can publish to the accepted streams (JOURNAL's fs.journal.>
// and fs.token.>, and DENIED's fs.denied.>).
//
// The same definitions feed the embedded server (Apply) and the deployed
// configs (ConfigFile, DeployedConfig), so the two cannot drift.
package natsauth

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats-server/v2/server"
)

// Role is what a NATS user is for.
type Role string

// The roles.
const (
	// RoleGuard is the guard's user: the only one that may publish to the
	// accepted streams.
	RoleGuard Role = "guard"
	// RoleServices is the user of the other services (journal, antientropy,
	// snapshot, receipts, ota): the internal fs.svc.> requests, their own
	// streams, JetStream's API, and INGRESS for facts pulled from peers.
	RoleServices Role = "services"
	// RoleClient is an application or SDK: ingress, client requests and
	// replies, its authorities' changes, and the changes of the peer's
	// presence bucket republished on fs.discovery.> (a peer id, an
	// interval and when it was heard, which the SDK's peer discovery
	// follows). It has no JetStream API: watching the bucket itself
	// would take consumer creation on it, and a consumer's deliver
	// subject is the creator's choice, which nats-server does not check
	// against the creator's permissions.
	RoleClient Role = "client"
	// RolePeer is a remote peer (a leafnode or a peer's services connecting
	// in): peer requests, presence and replies only. Bound to its PeerID
	// (User.Peer) it also receives the requests addressed to it, which is
	// what a mesh hub's user for that peer's leafnode link needs.
	RolePeer Role = "peer"
	// RoleOps is an operator of a deployed peer: JetStream's API for
	// stream backups, restores and reports, and no fact subject at all.
	RoleOps Role = "ops"
)

// User is one NATS user with a role.
type User struct {
	Name     string
	Password string
	Role     Role
	// Authorities, for a client, scopes the user to those authorities:
	// it may publish INGRESS batches and API requests, and watch document
	// changes, only for them. A change carries the document, so an
	// unscoped client (none listed) can read every authority's documents
	// on fs.changes.>; scope every client that is not fully trusted.
	Authorities []events.AuthorityID
	// Peer, for a peer, is the PeerID the user speaks for: it may announce
	// presence only as that peer, and it may receive the requests
	// addressed to that peer (fs.peer.<Peer>.>) but no other peer's.
	// Unset, it may announce any peer and receives no requests.
	Peer events.PeerID
	// ReplyTo, for a peer, names the users whose private inboxes
	// (InboxPrefix) it may publish to, to answer their requests: on a
	// mesh hub, the other peers' users. A peer with a PrivateInbox
	// answers only those; without one it may publish to all of _INBOX.>.
	ReplyTo []string
	// PrivateInbox, for a client or a peer, lets the user receive replies
	// only on InboxPrefix(Name), so it cannot read replies meant for
	// others on _INBOX.>. The user's connections must then set
	// nats.CustomInboxPrefix(InboxPrefix(Name)).
	PrivateInbox bool
}

// InboxPrefix is the reply-subject prefix of a user with PrivateInbox.
func InboxPrefix(user string) string { return "_INBOX_" + user }

// Permissions returns what u may do: its role's permissions, narrowed by
// Authorities and Peer.
func (u User) Permissions() (*server.Permissions, error) {
	perms, err := Permissions(u.Role)
	if err != nil {
		return nil, err
	}
	switch {
	case u.Role == RoleClient && len(u.Authorities) > 0:
		pub := []string{events.PeerPrefix + ".>", inbox}
		sub := []string{inbox, events.DiscoveryPrefix + ".>"}
		for _, a := range u.Authorities {
			if err := a.Validate(); err != nil {
				return nil, fmt.Errorf("natsauth: user %s: %w", u.Name, err)
			}
			pub = append(pub, events.IngressFactSubject(a), events.APISubject("*", "*", a))
			sub = append(sub, events.ChangesPrefix+"."+string(a)+".>")
		}
		perms.Publish.Allow, perms.Subscribe.Allow = pub, sub
	case u.Role == RolePeer && u.Peer != "":
		if err := u.Peer.Validate(); err != nil {
			return nil, fmt.Errorf("natsauth: user %s: %w", u.Name, err)
		}
		perms.Publish.Allow = []string{events.PeerPrefix + ".>", events.PresenceSubject(u.Peer), inbox}
		perms.Subscribe.Allow = append(perms.Subscribe.Allow, events.PeerPrefix+"."+string(u.Peer)+".>")
	}
	if len(u.ReplyTo) > 0 && u.Role != RolePeer {
		return nil, fmt.Errorf("natsauth: user %s: only a peer answers other users' requests (ReplyTo)", u.Name)
	}
	for _, other := range u.ReplyTo {
		if !inboxToken(other) {
			return nil, fmt.Errorf("natsauth: user %s: reply-to user %q has no private inbox: the name is not a subject token", u.Name, other)
		}
		perms.Publish.Allow = append(perms.Publish.Allow, InboxPrefix(other)+".>")
	}
	if u.PrivateInbox && (u.Role == RoleClient || u.Role == RolePeer) {
		if !inboxToken(u.Name) {
			return nil, fmt.Errorf("natsauth: user %q cannot have a private inbox: the name is not a subject token", u.Name)
		}
		for i, s := range perms.Subscribe.Allow {
			if s == inbox {
				perms.Subscribe.Allow[i] = InboxPrefix(u.Name) + ".>"
			}
		}
		if u.Role == RolePeer {
			// Its replies go to the private inboxes of ReplyTo; the
			// shared _INBOX.> would let it answer (or forge answers to)
			// anyone's requests.
			perms.Publish.Allow = slices.DeleteFunc(perms.Publish.Allow, func(s string) bool { return s == inbox })
		}
	}
	return perms, nil
}

// inboxToken reports whether a user name can make a private inbox prefix:
// a non-empty subject token.
func inboxToken(name string) bool { return name != "" && !strings.ContainsAny(name, ".*> \t") }

// inbox is where nats.go and the JetStream API address replies.
const inbox = "_INBOX.>"

// accepted are the subjects whose streams hold only what the guard
// accepted.
var accepted = []string{events.JournalPrefix + ".>", events.TokenPrefix + ".>", events.DeniedPrefix + ".>"}

// guardOnly are the JetStream API, ack and KV subjects by which anyone
// but the guard could change, empty or bypass what the guard owns: the
// guarded streams' configuration and messages, acks and consumers on
// INGRESS (acking a batch there drops it unchecked), and the revocation
// and prune-cut buckets. Each API subject is denied both plainly and through a JetStream
// domain ($JS.<domain>.API...).
func guardOnly() []string {
	var api []string
	for _, stream := range []string{events.StreamIngress, events.StreamJournal, events.StreamDenied, "KV_" + events.RevocationBucket, "KV_" + events.PrunedFloorBucket} {
		for _, op := range []string{"STREAM.UPDATE", "STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE"} {
			api = append(api, op+"."+stream)
		}
	}
	for _, consumerOp := range []string{"*", "*.*"} { // CREATE, DELETE, ...; DURABLE.CREATE, MSG.NEXT
		api = append(api, "CONSUMER."+consumerOp+"."+events.StreamIngress, "CONSUMER."+consumerOp+"."+events.StreamIngress+".>")
	}
	var subs []string
	for _, s := range api {
		subs = append(subs, "$JS.API."+s, "$JS.*.API."+s)
	}
	// Acks come as $JS.ACK.<stream>... (v1) or $JS.ACK.<domain>.<account hash>.<stream>... (v2).
	return append(subs, "$JS.ACK."+events.StreamIngress+".>", "$JS.ACK.*.*."+events.StreamIngress+".>",
		"$KV."+events.RevocationBucket+".>", "$KV."+events.PrunedFloorBucket+".>")
}

// Permissions returns what an unscoped user of role may do.
func Permissions(role Role) (*server.Permissions, error) {
	switch role {
	case RoleGuard:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}},
		}, nil
	case RoleServices:
		return &server.Permissions{
			Publish: &server.SubjectPermission{
				Allow: []string{">"},
				Deny:  append(append([]string{}, accepted...), guardOnly()...),
			},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}},
		}, nil
	case RoleClient:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				events.IngressPrefix + ".>", events.APIPrefix + ".>", events.PeerPrefix + ".>", inbox,
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox, events.ChangesPrefix + ".>", events.DiscoveryPrefix + ".>"}},
		}, nil
	case RolePeer:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				events.PeerPrefix + ".>", events.PresencePrefix + ".>", inbox,
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox, events.PresencePrefix + ".>"}},
		}, nil
	case RoleOps:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>", "$JS.SNAPSHOT.>", inbox}},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox, "$JS.SNAPSHOT.>", "$JS.EVENT.>"}},
		}, nil
	}
	return nil, fmt.Errorf("natsauth: unknown role %q", role)
}

// Apply adds users to the options of an embedded server; use it as (or
// inside) bus.EmbeddedConfig.Configure. Once a server has users, every
// connection must authenticate as one of them.
func Apply(users ...User) (func(*server.Options), error) {
	built := make([]*server.User, 0, len(users))
	for _, u := range users {
		if u.Name == "" || u.Password == "" {
			return nil, fmt.Errorf("natsauth: user %q needs a name and a password", u.Name)
		}
		perms, err := u.Permissions()
		if err != nil {
			return nil, err
		}
		built = append(built, &server.User{Username: u.Name, Password: u.Password, Permissions: perms})
	}
	return func(o *server.Options) { o.Users = append(o.Users, built...) }, nil
}

// ConfigFile renders users as the authorization block of a nats-server
// config file. A password may name a config variable ("$GUARD_PASSWORD"),
// which nats-server resolves from the environment, so secrets stay out of
// manifests.
func ConfigFile(users ...User) (string, error) {
	var b strings.Builder
	b.WriteString("authorization {\n  users = [\n")
	for _, u := range users {
		perms, err := u.Permissions()
		if err != nil {
			return "", err
		}
		password := strconv.Quote(u.Password)
		if strings.HasPrefix(u.Password, "$") {
			password = u.Password
		}
		fmt.Fprintf(&b, "    { # role %s\n      user: %s\n      password: %s\n      permissions: {\n", u.Role, strconv.Quote(u.Name), password)
		writeSubjects(&b, "publish", perms.Publish)
		writeSubjects(&b, "subscribe", perms.Subscribe)
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

func writeSubjects(b *strings.Builder, kind string, p *server.SubjectPermission) {
	quote := func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = strconv.Quote(s)
		}
		sort.Strings(q)
		return "[" + strings.Join(q, ", ") + "]"
	}
	fmt.Fprintf(b, "        %s: { allow: %s", kind, quote(p.Allow))
	if len(p.Deny) > 0 {
		fmt.Fprintf(b, ", deny: %s", quote(p.Deny))
	}
	b.WriteString(" }\n")
}
