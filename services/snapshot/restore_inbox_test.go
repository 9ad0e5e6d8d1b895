package snapshot

import (
	"math/rand/v2"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
)

// TestRestoreProgressGoesOnlyToAnInbox: the service publishes a restore's
// progress where the request's progress_inbox says, with the services'
// permissions, which reach change notices and other peers' subjects a
// client cannot publish to. Anything but an inbox is refused before the
// restore starts.
func TestRestoreProgressGoesOnlyToAnInbox(t *testing.T) {
	rng := rand.New(rand.NewPCG(61, 61))
	w := newWriter(t, rng)
	p := startPeer(t, rng, clock.NewFake(testNow), selfApproved)
	restore := events.APISubject(events.SnapshotProto, events.SnapshotOpRestore, w.auth())
	for _, inbox := range []string{events.ChangesSubject(w.auth(), "notes", "n1"), "fs.in.fact." + string(w.auth()), "app.progress"} {
		req := events.SnapshotRestoreRequest{Collection: "*", From: p.id, ProgressInbox: inbox}
		if err := request(t, p.h.Conn, restore, w, w.token, req, nil); !events.IsReason(err, events.ReasonMalformed) {
			t.Errorf("restore with progress_inbox %q: %v, want malformed", inbox, err)
		}
	}
}
