package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/nats-io/nats-server/v2/server"
)

// embeddedUsers are the NATS users of an embedded server, one per role, so
// the server enforces the guard's boundary even in a one-process stack.
// Their random passwords are kept in the data directory (0600), so the
// context file and restarts keep working.
type embeddedUsers struct {
	Guard    natsauth.User `json:"guard"`
	Services natsauth.User `json:"services"`
	Client   natsauth.User `json:"client"`
	Peer     natsauth.User `json:"peer"`
}

func (u embeddedUsers) all() []natsauth.User {
	return []natsauth.User{u.Guard, u.Services, u.Client, u.Peer}
}

// url returns serverURL with user's credentials in it, the form the
// context file and the nats CLI take.
func (embeddedUsers) url(serverURL string, user natsauth.User) string {
	u, err := url.Parse(serverURL)
	if err != nil {
		return serverURL
	}
	u.User = url.UserPassword(user.Name, user.Password)
	return u.String()
}

// loadUsers reads a users file; the error wraps os.ErrNotExist when there
// is none.
func loadUsers(path string) (embeddedUsers, error) {
	var u embeddedUsers
	b, err := os.ReadFile(path)
	if err != nil {
		return u, fmt.Errorf("read NATS users file: %w", err)
	}
	if err := json.Unmarshal(b, &u); err != nil {
		return u, fmt.Errorf("NATS users file %s is corrupt (delete it to make new passwords): %w", path, err)
	}
	return u, nil
}

func loadOrCreateUsers(path string) (embeddedUsers, error) {
	u, err := loadUsers(path)
	if !errors.Is(err, os.ErrNotExist) {
		return u, err
	}
	for _, p := range []struct {
		user *natsauth.User
		role natsauth.Role
	}{{&u.Guard, natsauth.RoleGuard}, {&u.Services, natsauth.RoleServices}, {&u.Client, natsauth.RoleClient}, {&u.Peer, natsauth.RolePeer}} {
		*p.user = natsauth.User{Name: string(p.role), Password: randomSecret(), Role: p.role}
	}
	b, _ := json.MarshalIndent(u, "", "  ")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return u, err
	}
	return u, os.WriteFile(path, b, 0o600)
}

func randomSecret() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// startEmbedded starts the embedded nats-server with JetStream under
// DATA/nats, with the role users applied.
func startEmbedded(o *serveOptions, users embeddedUsers) (*server.Server, error) {
	// The client user receives replies only on its own inbox prefix
	// (natsauth.InboxPrefix, "_INBOX_client"), so no client reads the
	// replies meant for another. When the stack knows its authorities
	// (factsync dev), the client user may also write to and watch only
	// those: a change notification carries the document.
	users.Client.PrivateInbox = true
	users.Client.Authorities = o.clientAuthorities
	apply, err := natsauth.Apply(users.all()...)
	if err != nil {
		return nil, err
	}
	if o.configureNATS != nil {
		applyUsers := apply
		apply = func(opts *server.Options) { applyUsers(opts); o.configureNATS(opts) }
	}
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{
		StoreDir:  filepath.Join(o.data, "nats"),
		Host:      o.natsHost,
		Port:      o.natsPort,
		Domain:    o.domain,
		Configure: apply,
	})
	if err != nil {
		return nil, fmt.Errorf("start embedded NATS on %s:%d (is another factsync running? try --nats-port -1): %w", o.natsHost, o.natsPort, err)
	}
	return ns, nil
}

// redactURL hides a password in a URL for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	return u.Redacted()
}
