package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/factsync/factsync/shared/natsauth"
)

// TestNATSConfigPrintsTheDeployedConfig: the command prints exactly what
// deploy/deploytest compares the checked-in permissions files with, and
// refuses an id that is not a PeerID as a usage error.
func TestNATSConfigPrintsTheDeployedConfig(t *testing.T) {
	const a, b = "aaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbb"
	var out, errOut bytes.Buffer
	if code := execute(context.Background(), []string{"nats-config", "--peer", b + "," + a}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	want, err := natsauth.DeployedConfig(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != want {
		t.Fatalf("nats-config printed\n%s\nwant\n%s", out.String(), want)
	}

	out.Reset()
	errOut.Reset()
	if code := execute(context.Background(), []string{"nats-config", "--peer", "berlin"}, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), `peer id "berlin"`) {
		t.Fatalf("a malformed peer id: exit %d, %q; want a usage error naming it", code, errOut.String())
	}
}
