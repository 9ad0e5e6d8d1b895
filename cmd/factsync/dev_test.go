package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// startDev runs `factsync dev` in-process on free ports and waits until its
// context file names a ready stack. Cancelling the returned function stops
// it and returns its exit code.
func startDev(t *testing.T) (devStack, func() int) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan int, 1)
	var out bytes.Buffer
	go func() {
		exit <- run(ctx, []string{"dev", "--data", dir, "--nats-port", "-1", "--http", "127.0.0.1:0", "--log-level", "warn"})
	}()
	stop := func() int {
		cancel()
		select {
		case code := <-exit:
			return code
		case <-time.After(30 * time.Second):
			t.Fatal("factsync dev did not stop within 30s of Ctrl-C")
			return -1
		}
	}
	ctxFile := filepath.Join(dir, "context.json")
	deadline := time.Now().Add(60 * time.Second)
	for {
		if sc, err := readContext(ctxFile); err == nil && readyz(sc.HTTPURL) == http.StatusOK {
			return devStack{sc, ctxFile}, stop
		}
		select {
		case code := <-exit:
			t.Fatalf("factsync dev exited with %d before it was ready: %s", code, out.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatal("factsync dev was not ready within 60s")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not synchronising on time
	}
}

// devStack is a running dev stack's context and the file it is in.
type devStack struct {
	stackContext
	contextFile string
}

// readyz returns the status code of base's /readyz, 0 when unreachable.
func readyz(base string) int {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	return resp.StatusCode
}

// factsync dev comes up with every registered service ready, writes a
// usable context, and stops cleanly on Ctrl-C with no goroutines left.
func TestDevStartsEveryServiceAndStopsCleanly(t *testing.T) {
	defer goleak.VerifyNone(t,
		// The test's own HTTP client keeps idle connections.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
	)
	sc, stop := startDev(t)

	resp, err := http.Get(sc.HTTPURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var ready struct {
		Ready    bool `json:"ready"`
		Services []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"services"`
	}
	err = json.NewDecoder(resp.Body).Decode(&ready)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range ready.Services {
		got[s.Name] = s.State
	}
	for _, name := range serviceNames() {
		if got[name] != "ready" {
			t.Errorf("/readyz: service %s is %q, want ready (all: %v)", name, got[name], got)
		}
	}
	for _, f := range []string{sc.AuthorityKey, sc.DeviceKey, sc.Token} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("context names %s: %v (mode %v), want a 0600 file", f, err, st)
		}
	}
	if err := sc.Authority.Validate(); err != nil {
		t.Errorf("context authority: %v", err)
	}
	http.DefaultClient.CloseIdleConnections()
	if code := stop(); code != 0 {
		t.Fatalf("factsync dev exited with %d after Ctrl-C, want 0", code)
	}
}
