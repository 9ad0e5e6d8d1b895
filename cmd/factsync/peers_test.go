package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/factsync/factsync/events"
)

// `factsync peers` on a lone stack lists no peer; `factsync peers add`
// refuses a malformed id as a usage error, and an id no peer answers for
// on the mesh with not_found.
func TestPeersAddRefusesBadPeers(t *testing.T) {
	sc, stop := startDev(t)
	defer stop()
	if out := cli(t, sc.contextFile, "peers"); !strings.Contains(out, "knows no other peer yet") {
		t.Fatalf("factsync peers on a lone stack: %q", out)
	}
	run := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := execute(context.Background(), append([]string{"--context", sc.contextFile}, args...), &out, &errOut)
		return code, out.String() + errOut.String()
	}
	if code, out := run("peers", "add", "not-a-peer"); code != exitUsage {
		t.Fatalf("peers add not-a-peer: exit %d, want %d (usage): %s", code, exitUsage, out)
	}
	if code, out := run("peers", "add", strings.Repeat("a", events.IDLen)); code != exitFailure || !strings.Contains(out, string(events.ReasonNotFound)) {
		t.Fatalf("peers add of an id no peer answers for: exit %d, want %d with %s: %s", code, exitFailure, events.ReasonNotFound, out)
	}
}
