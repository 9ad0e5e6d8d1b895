package bustest

import (
	"context"
	"testing"
	"time"

	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/service"
)

// RunServices runs services under the runner for the rest of the test and
// returns once every one is ready (failing the test after 30 s). At
// cleanup the services are stopped, and a service that ends with an error
// fails the test.
func RunServices(t testing.TB, cfg runner.Config, services ...service.Service) *runner.Runner {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := runner.Start(ctx, cfg, services...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			t.Errorf("services of peer %s: %v", cfg.Peer, err)
		}
	})
	select {
	case <-r.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("services of peer %s not ready in 30s: %+v", cfg.Peer, r.Status())
	}
	return r
}
