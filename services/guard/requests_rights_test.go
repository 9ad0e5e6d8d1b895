package guard_test

import (
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/capability"
)

// Each OTA operation needs the right the OTA contract names, so a device
// that may only read cannot abort a release or report readiness.
func TestOTARequestRights(t *testing.T) {
	want := map[string]capability.Op{
		events.OTAOpPropose: capability.OpOTAPropose,
		events.OTAOpAbort:   capability.OpOTAPropose,
		events.OTAOpApprove: capability.OpOTAApprove,
		events.OTAOpPolicy:  capability.OpOTAApprove,
		events.OTAOpReady:   capability.OpSync,
		events.OTAOpFetch:   capability.OpSync,
		events.OTAOpStatus:  capability.OpRead,
	}
	for op, wantOp := range want {
		r, err := guard.RequestRight("ota", op, []byte(`{"collection":"*"}`))
		if err != nil || r.Op != wantOp || r.Collection != capability.AnyCollection {
			t.Errorf("ota %s needs %v (%v), want *:%s", op, r, err, wantOp)
		}
	}
	if _, err := guard.RequestRight("ota", "launch", nil); !events.IsReason(err, events.ReasonNotFound) {
		t.Errorf("an unknown ota operation got %v, want not_found", err)
	}
}

// An operation the journal does not have is refused by the guard with
// not_found, not forwarded to time out as unavailable.
func TestUnknownJournalOperation(t *testing.T) {
	for _, op := range []string{events.OpGet, events.OpQuery, events.OpCount} {
		if _, err := guard.RequestRight(events.JournalProto, op, []byte(`{"collection":"notes"}`)); err != nil {
			t.Errorf("journal %s: %v", op, err)
		}
	}
	if _, err := guard.RequestRight(events.JournalProto, "drop", []byte(`{"collection":"notes"}`)); !events.IsReason(err, events.ReasonNotFound) {
		t.Errorf("journal drop got %v, want not_found", err)
	}
}
