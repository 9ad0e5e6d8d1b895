package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go"
)

// The dev stack's client user may watch only its own authority's
// changes, and receive replies only on its private inbox: a client cannot
// read another authority's documents or others' replies off the bus.
func TestDevClientUserIsScoped(t *testing.T) {
	sc, stop := startDev(t)
	defer stop()

	violations := make(chan error, 8)
	nc, err := nats.Connect(sc.NATSURL, nats.CustomInboxPrefix(sc.NATSInboxPrefix),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	refused := func(subject string) {
		t.Helper()
		if _, err := nc.SubscribeSync(subject); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-violations:
			if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(err.Error(), "Permissions Violation") {
				t.Fatalf("subscribe %s: %v, want a permissions violation", subject, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("subscribing to %s was not refused", subject)
		}
	}
	other := events.AuthorityID(strings.Repeat("a", events.IDLen))
	refused(events.ChangesPrefix + "." + string(other) + ".>")
	refused(events.ChangesPrefix + ".>")
	refused("_INBOX.>")

	// Its own authority's changes and its own inbox are allowed.
	for _, subject := range []string{events.ChangesPrefix + "." + string(sc.Authority) + ".>", sc.NATSInboxPrefix + ".x"} {
		if _, err := nc.SubscribeSync(subject); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-violations:
		t.Fatalf("an allowed subscription was refused: %v", err)
	default:
	}
}
