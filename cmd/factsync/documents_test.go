package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cli runs one client command against the dev stack and returns stdout.
func cli(t *testing.T, ctxFile string, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := execute(context.Background(), append([]string{"--context", ctxFile}, args...), &out, &errOut); code != 0 {
		t.Fatalf("factsync %s: exit %d: %s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	}
	return out.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition
	}
}

// While put and delete run, watch prints initial, then updated for
// matching changes, and removed both when a document stops matching and
// when it is deleted.
func TestWatchFollowsPutAndDelete(t *testing.T) {
	sc, stop := startDev(t)
	defer stop()
	ctxFile := sc.contextFile

	cli(t, ctxFile, "put", "notes", "old", "priority=5")

	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"--context", ctxFile, "watch", "notes", "--where", "priority >= 2", "-o", "json"}, &out, &out)
	}()
	events := func() []watchEvent {
		var evs []watchEvent
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var ev watchEvent
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Event != "" {
				evs = append(evs, ev)
			}
		}
		return evs
	}
	waitFor(t, "the initial set", func() bool { return len(events()) >= 1 })

	cli(t, ctxFile, "put", "notes", "n1", "title=hello", "priority=3")
	cli(t, ctxFile, "put", "notes", "n1", "priority=1") // stops matching
	cli(t, ctxFile, "delete", "notes", "old", "--reason", "done")
	waitFor(t, "four events", func() bool { return len(events()) >= 4 })
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("watch exited %d: %s", code, out.String())
	}

	evs := events()
	want := []struct{ event, id, cause string }{
		{"initial", "old", ""},
		{"updated", "n1", ""},
		{"removed", "n1", "stopped_matching"},
		{"removed", "old", "deleted"},
	}
	if len(evs) != len(want) {
		t.Fatalf("watch printed %d events, want %d:\n%s", len(evs), len(want), out.String())
	}
	for i, w := range want {
		ev := evs[i]
		id := ""
		if ev.Document != nil {
			id = ev.Document.ID
		} else if len(ev.Documents) == 1 {
			id = ev.Documents[0].ID
		}
		if ev.Event != w.event || id != w.id || ev.Cause != w.cause {
			t.Errorf("event %d: %s %s (%s), want %s %s (%s)", i, ev.Event, id, ev.Cause, w.event, w.id, w.cause)
		}
	}
}
