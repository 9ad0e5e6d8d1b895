package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/runner"
	"github.com/spf13/cobra"
)

// startServe runs `factsync serve` (every service, embedded NATS) on a
// fresh data directory and free ports, and waits until every service is
// ready.
func startServe(t *testing.T, args ...string) *stack {
	t.Helper()
	o := &serveOptions{}
	cmd := &cobra.Command{}
	o.addFlags(cmd, "127.0.0.1:0")
	if err := cmd.Flags().Parse(append([]string{"--data", t.TempDir(), "--nats-port", "-1", "--log-level", "error"}, args...)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := startStack(ctx, o, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := st.wait(context.Background()); err != nil {
			t.Errorf("serve stopped with %v", err)
		}
	})
	select {
	case <-st.runner.Ready():
	case <-time.After(60 * time.Second):
		t.Fatalf("serve was not ready within 60s: %+v", st.runner.Status())
	}
	return st
}

// Plain `factsync serve` on a data directory with no release policy runs
// the ota service anyway: /readyz lists it ready with a remark saying the
// policy is missing and how to make one, and it refuses OTA requests with
// reason not_configured rather than leaving them unanswered.
func TestServeWithoutReleasePolicyRefusesOTAWithAReason(t *testing.T) {
	st := startServe(t)

	resp, err := http.Get("http://" + st.httpAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var ready struct {
		Ready    bool            `json:"ready"`
		Services []runner.Status `json:"services"`
	}
	err = json.NewDecoder(resp.Body).Decode(&ready)
	resp.Body.Close()
	if err != nil || !ready.Ready {
		t.Fatalf("/readyz: %+v, %v; want ready", ready, err)
	}
	var ota *runner.Status
	for i, s := range ready.Services {
		if s.Name == "ota" {
			ota = &ready.Services[i]
		}
	}
	if ota == nil || ota.State != runner.StateReady || !strings.Contains(ota.Detail, "no OTA release policy") || !strings.Contains(ota.Detail, "factsync ota init") {
		t.Fatalf("/readyz ota entry %+v; want ready with a remark on the missing policy and how to make one", ota)
	}

	nc, err := bus.Connect(context.Background(), st.opsURL, bus.ConnectOptions{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	auth := events.AuthorityID(strings.Repeat("a", events.IDLen))
	body, _ := json.Marshal(events.OTAStatusRequest{Collection: "*"})
	reply, err := nc.Request(events.ServiceSubject("ota", events.OTAOpStatus, auth), body, 10*time.Second)
	if err != nil {
		t.Fatalf("OTA status request: %v", err)
	}
	if got := reply.Header.Get(events.HeaderReason); got != string(events.ReasonNotConfigured) {
		t.Fatalf("OTA status reply reason %q (%s); want %s", got, reply.Data, events.ReasonNotConfigured)
	}
	if e := events.DecodeError(reply.Data); e == nil || !strings.Contains(e.Detail, "ota init") {
		t.Fatalf("refusal %s does not say how to configure a policy", reply.Data)
	}
}
