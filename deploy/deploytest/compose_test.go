package deploytest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/factsync/factsync/shared/natsauth"
)

// TestComposeFile loads deploy/compose.yaml with compose-go, the loader
// `docker compose config` itself uses (its JSON-schema validation,
// interpolation, merges of YAML anchors and consistency checks); CI has
// the docker CLI at most, without the compose plugin or an engine.
func TestComposeFile(t *testing.T) {
	file := repoPath(t, "deploy/compose.yaml")
	details, err := loader.LoadConfigFiles(context.Background(), []string{file}, filepath.Dir(file))
	if err != nil {
		t.Fatal(err)
	}
	details.Environment = types.Mapping{} // only the file's own defaults
	project, err := loader.LoadWithContext(context.Background(), *details, func(o *loader.Options) {
		o.SetProjectName("factsync", true)
	})
	if err != nil {
		t.Fatalf("deploy/compose.yaml does not load: %v", err)
	}

	t.Run("nats cluster", func(t *testing.T) {
		nodes := []string{"nats-1", "nats-2", "nats-3"}
		routes := string(readRepoFile(t, "deploy/nats/cluster.conf"))
		for _, n := range nodes {
			s, ok := project.Services[n]
			if !ok {
				t.Fatalf("no service %s", n)
			}
			if name := s.Environment["SERVER_NAME"]; name == nil || *name != n {
				t.Errorf("%s has SERVER_NAME %v", n, name)
			}
			if !strings.Contains(routes, "nats://"+n+":6222") {
				t.Errorf("deploy/nats/cluster.conf has no route to %s", n)
			}
			if s.HealthCheck == nil || !strings.Contains(strings.Join(s.HealthCheck.Test, " "), "/healthz") {
				t.Errorf("%s has no /healthz health check", n)
			}
			if len(s.Volumes) == 0 || s.Volumes[0].Target != "/data" {
				t.Errorf("%s keeps JetStream's store outside a volume", n)
			}
		}
		for _, c := range project.Configs {
			if _, err := os.Stat(c.File); err != nil {
				t.Errorf("config %s: %v", c.Name, err)
			}
		}
	})

	t.Run("services", func(t *testing.T) {
		for _, svc := range services {
			s, ok := project.Services[svc]
			if !ok {
				t.Errorf("no service %s", svc)
				continue
			}
			if got := strings.Join(s.Command, " "); got != "serve "+svc {
				t.Errorf("%s runs %q, want \"serve %s\"", svc, got, svc)
			}
			if s.Build == nil || s.Build.Dockerfile != "deploy/Dockerfile" {
				t.Errorf("%s is not built from deploy/Dockerfile", svc)
			}
			if s.HealthCheck == nil || !slices.Contains(s.HealthCheck.Test, "http://127.0.0.1:8080/readyz") {
				t.Errorf("%s has no health check on /readyz", svc)
			}
			for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
				if s.DependsOn[n].Condition != types.ServiceConditionHealthy {
					t.Errorf("%s does not wait for %s to be healthy", svc, n)
				}
			}
			wantUser := "services"
			if svc == "guard" {
				wantUser = "guard"
			}
			env := func(k string) string {
				if v := s.Environment[k]; v != nil {
					return *v
				}
				return ""
			}
			if env("FACTSYNC_NATS_USER") != wantUser {
				t.Errorf("%s connects as %q, want %q", svc, env("FACTSYNC_NATS_USER"), wantUser)
			}
			if env("FACTSYNC_NATS_PASSWORD") != "dev-"+wantUser {
				t.Errorf("%s uses the password of another user", svc)
			}
			if svc != "guard" && env("FACTSYNC_MESH_INBOX_PREFIX") != natsauth.ServicesMeshInbox {
				t.Errorf("%s sends its requests to remote peers with reply prefix %q, want %q", svc, env("FACTSYNC_MESH_INBOX_PREFIX"), natsauth.ServicesMeshInbox)
			}
			if !strings.HasPrefix(env("OTEL_EXPORTER_OTLP_ENDPOINT"), "http://otel-collector:") {
				t.Errorf("%s does not export traces to the collector", svc)
			}
			if env("OTEL_SERVICE_NAME") != "factsync-"+svc {
				t.Errorf("%s has OTEL_SERVICE_NAME %q", svc, env("OTEL_SERVICE_NAME"))
			}
		}
		for _, s := range []string{"otel-collector", "jaeger"} {
			if _, ok := project.Services[s]; !ok {
				t.Errorf("no service %s", s)
			}
		}
	})
}
