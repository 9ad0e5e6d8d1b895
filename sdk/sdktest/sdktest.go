// Package sdktest is the acceptance suite every sdk.DataSyncBackend must
// pass, in the manner of watermill's pubsub/tests: a backend's own test
// calls TestBackend with a Setup that makes clients, and the suite checks
// the DocumentStore contract, observations, convergence of concurrent
// edits, and (when the backend links peers) discovery and sync.
package sdktest

import (
	"context"
	"testing"
	"time"

	"github.com/factsync/factsync/sdk"
)

// Setup tells the suite how to make clients of a backend.
type Setup struct {
	// NewClients returns n initialized clients of one fresh authority,
	// each acting as a different device, that converge on one state: one
	// stack for a server backend, linked and syncing peers for an
	// in-process one. tweak, when not nil, edits each Config before
	// Initialize. Clients are shut down when the test ends.
	NewClients func(t *testing.T, n int, tweak func(*sdk.Config)) []sdk.DataSyncBackend
	// NewPeerClients links n peers and returns a client on each (see
	// Peers), for the discovery and sync tests. Nil means the backend
	// links no peers: the peer test then checks that ForceSync says so
	// (unsupported or unavailable).
	NewPeerClients func(t *testing.T, n int) Peers
	// Timeout bounds each wait for replicas to converge; zero means 10s.
	Timeout time.Duration
}

// TestBackend runs the whole suite.
func TestBackend(t *testing.T, s Setup) {
	if s.Timeout == 0 {
		s.Timeout = 10 * time.Second
	}
	tests := []struct {
		name string
		run  func(*testing.T, Setup)
	}{
		{"Lifecycle", testLifecycle},
		{"UpsertGetMergesFields", testUpsertGet},
		{"UpsertGeneratesIDs", testUpsertGeneratesIDs},
		{"RefusesBadInput", testRefusesBadInput},
		{"DeleteHidesAndPutRevives", testDelete},
		{"QueryFilterSortPage", testQuery},
		{"Count", testCount},
		{"ApplyBatch", testApply},
		{"ObserveLocalAndRemote", testObserve},
		{"ObserveSlowObserverResyncs", testObserveResync},
		{"ConcurrentEditsToDifferentFieldsBothSurvive", testConcurrentFields},
		{"SameFieldConvergesToOneWinner", testSameFieldWinner},
		{"PeerDiscoveryAndSync", testPeers},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, s) })
	}
}

// eventually polls cond until it holds or the setup's timeout passes.
func eventually(t *testing.T, s Setup, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(s.Timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last state: %s", what, s.Timeout, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxFor(t *testing.T, s Setup) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), s.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// nextEvent waits for an observation event.
func nextEvent(t *testing.T, s Setup, o *sdk.Observation) sdk.Event {
	t.Helper()
	select {
	case ev, ok := <-o.Events():
		if !ok {
			t.Fatalf("observation ended early: %v", o.Err())
		}
		return ev
	case <-time.After(s.Timeout):
		t.Fatalf("no observation event within %s", s.Timeout)
	}
	panic("unreachable")
}
