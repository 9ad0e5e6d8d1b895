package deploytest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
)

// The Tiltfile is Starlark. These tests run it, with its loads, under
// go.starlark.net in Tilt's dialect, with Tilt's functions replaced by
// recorders, once as if there were a Kubernetes context and once as if
// there were none, and check what it would ask Tilt to do.

// tiltCall is one recorded call of a Tilt function.
type tiltCall struct {
	fn     string
	args   starlark.Tuple
	kwargs map[string]starlark.Value
}

func (c tiltCall) str(kw string) string {
	s, _ := starlark.AsString(c.kwargs[kw])
	return s
}

func (c tiltCall) arg(i int) string {
	if i >= len(c.args) {
		return ""
	}
	s, _ := starlark.AsString(c.args[i])
	return s
}

// tiltRun is the result of executing the Tiltfile once.
type tiltRun struct {
	calls []tiltCall
	err   error
}

func (r *tiltRun) named(fn string) []tiltCall {
	var out []tiltCall
	for _, c := range r.calls {
		if c.fn == fn {
			out = append(out, c)
		}
	}
	return out
}

// resource finds the call of fn whose first argument is name.
func (r *tiltRun) resource(fn, name string) (tiltCall, bool) {
	for _, c := range r.named(fn) {
		if c.arg(0) == name {
			return c, true
		}
	}
	return tiltCall{}, false
}

var tiltDialect = &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}

// runTiltfile executes the Tiltfile with k8sContext as Tilt's
// k8s_context() and env as the environment os.getenv sees.
func runTiltfile(t *testing.T, k8sContext string, env map[string]string) *tiltRun {
	t.Helper()
	root := repoRoot(t)
	run := &tiltRun{}
	recorder := func(name string, result func(kwargs map[string]starlark.Value) starlark.Value) *starlark.Builtin {
		return starlark.NewBuiltin(name, func(_ *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			kw := map[string]starlark.Value{}
			for _, p := range kwargs {
				kw[string(p[0].(starlark.String))] = p[1]
			}
			run.calls = append(run.calls, tiltCall{fn: name, args: args, kwargs: kw})
			if result != nil {
				return result(kw), nil
			}
			return starlark.None, nil
		})
	}
	asStruct := func(kw map[string]starlark.Value) starlark.Value {
		d := starlark.StringDict{}
		for k, v := range kw {
			d[k] = v
		}
		return starlarkstruct.FromStringDict(starlarkstruct.Default, d)
	}
	str := func(s string) starlark.Value { return starlark.String(s) }

	builtins := starlark.StringDict{
		"k8s_context": starlark.NewBuiltin("k8s_context", func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
			return str(k8sContext), nil
		}),
		"os": starlarkstruct.FromStringDict(starlarkstruct.Default, starlark.StringDict{
			"getenv": starlark.NewBuiltin("getenv", func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
				var key, def string
				if err := starlark.UnpackArgs(b.Name(), args, kwargs, "key", &key, "default?", &def); err != nil {
					return nil, err
				}
				if v, ok := env[key]; ok {
					return str(v), nil
				}
				return str(def), nil
			}),
			"path": starlarkstruct.FromStringDict(starlarkstruct.Default, starlark.StringDict{
				"join": starlark.NewBuiltin("join", func(_ *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, _ []starlark.Tuple) (starlark.Value, error) {
					parts := make([]string, len(args))
					for i, a := range args {
						parts[i], _ = starlark.AsString(a)
					}
					return str(filepath.Join(parts...)), nil
				}),
			}),
		}),
		"config":          starlarkstruct.FromStringDict(starlarkstruct.Default, starlark.StringDict{"main_dir": str(root)}),
		"local_resource":  recorder("local_resource", nil),
		"docker_build":    recorder("docker_build", nil),
		"k8s_yaml":        recorder("k8s_yaml", nil),
		"k8s_resource":    recorder("k8s_resource", nil),
		"kustomize":       recorder("kustomize", nil),
		"sync":            recorder("sync", asStruct),
		"probe":           recorder("probe", asStruct),
		"http_get_action": recorder("http_get_action", asStruct),
		"link":            recorder("link", asStruct),
	}
	extensions := map[string]starlark.StringDict{
		"ext://restart_process": {"docker_build_with_restart": recorder("docker_build_with_restart", nil)},
	}

	loaded := map[string]starlark.StringDict{}
	var exec func(thread *starlark.Thread, file string) (starlark.StringDict, error)
	load := func(thread *starlark.Thread, module string) (starlark.StringDict, error) {
		if ext, ok := extensions[module]; ok {
			return ext, nil
		}
		if strings.Contains(module, "://") {
			return nil, fmt.Errorf("the Tiltfile loads %s, which this check does not know", module)
		}
		from := filepath.Dir(thread.Name) // the loading file
		file := filepath.Join(from, module)
		if g, ok := loaded[file]; ok {
			return g, nil
		}
		g, err := exec(thread, file)
		loaded[file] = g
		return g, err
	}
	exec = func(_ *starlark.Thread, file string) (starlark.StringDict, error) {
		src, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		thread := &starlark.Thread{Name: file, Load: load}
		return starlark.ExecFileOptions(tiltDialect, thread, file, src, builtins)
	}
	_, run.err = exec(nil, filepath.Join(root, "Tiltfile"))
	return run
}

// readinessPath digs the /readyz path out of a recorded readiness_probe.
func readinessPath(c tiltCall) string {
	p, ok := c.kwargs["readiness_probe"].(*starlarkstruct.Struct)
	if !ok {
		return ""
	}
	get, err := p.Attr("http_get")
	if err != nil {
		return ""
	}
	path, err := get.(*starlarkstruct.Struct).Attr("path")
	if err != nil {
		return ""
	}
	s, _ := starlark.AsString(path)
	return s
}

func TestTiltfileParses(t *testing.T) {
	for _, f := range []string{"Tiltfile", "tilt/common.tiltfile", "tilt/k8s.tiltfile", "tilt/local.tiltfile"} {
		if _, err := tiltDialect.Parse(f, readRepoFile(t, f), 0); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestTiltfileWithoutKubernetes(t *testing.T) {
	run := runTiltfile(t, "", nil)
	if run.err != nil {
		t.Fatal(run.err)
	}
	if len(run.named("k8s_yaml")) != 0 || len(run.named("docker_build_with_restart")) != 0 {
		t.Error("without a Kubernetes context the Tiltfile must not deploy to Kubernetes")
	}
	nats, ok := run.resource("local_resource", "nats")
	if !ok {
		t.Fatal("no local_resource nats (the embedded JetStream server)")
	}
	if !strings.Contains(nats.str("serve_cmd"), "--nats-only") || readinessPath(nats) != "/readyz" {
		t.Errorf("nats must serve the embedded server alone and be probed on /readyz: %q", nats.str("serve_cmd"))
	}
	ports := map[string]string{}
	for _, svc := range services {
		c, ok := run.resource("local_resource", svc)
		if !ok {
			t.Errorf("no local_resource %s", svc)
			continue
		}
		cmd := c.str("serve_cmd")
		if !strings.HasPrefix(cmd, "go run ./cmd/factsync serve "+svc+" --nats nats://127.0.0.1:4222 ") {
			t.Errorf("%s serves %q, want `go run ./cmd/factsync serve %s --nats ...`", svc, cmd, svc)
		}
		if readinessPath(c) != "/readyz" {
			t.Errorf("%s has no readiness probe on /readyz", svc)
		}
		if deps, _ := c.kwargs["resource_deps"].(*starlark.List); deps == nil || deps.Index(0) != starlark.String("nats") {
			t.Errorf("%s does not wait for nats", svc)
		}
		_, port, _ := strings.Cut(cmd, "--http ")
		if other, dup := ports[port]; dup {
			t.Errorf("%s and %s both listen on %s", svc, other, port)
		}
		ports[port] = svc
	}
	if _, ok := run.resource("local_resource", "deploy-checks"); !ok {
		t.Error("no local_resource deploy-checks")
	}
}

func TestTiltfileWithKubernetes(t *testing.T) {
	run := runTiltfile(t, "kind-factsync", nil)
	if run.err != nil {
		t.Fatal(run.err)
	}
	kz := run.named("kustomize")
	if len(kz) != 1 || len(run.named("k8s_yaml")) != 1 {
		t.Fatalf("want one k8s_yaml(kustomize(...)), got %d kustomize calls", len(kz))
	}
	overlay := kz[0].arg(0)
	if _, err := os.Stat(filepath.Join(overlay, "kustomization.yaml")); err != nil {
		t.Fatalf("the Tiltfile applies %s: %v", overlay, err)
	}
	builds := run.named("docker_build_with_restart")
	if len(builds) != 1 || builds[0].arg(0) != "factsync" {
		t.Fatal("want one docker_build of the image factsync")
	}
	if lu, _ := builds[0].kwargs["live_update"].(*starlark.List); lu == nil || lu.Len() == 0 {
		t.Error("the image build has no live_update steps")
	}
	if _, err := os.Stat(builds[0].str("dockerfile")); err != nil {
		t.Errorf("dockerfile: %v", err)
	}

	// Every k8s_resource must name a workload the overlay renders.
	workloads := map[string]bool{}
	for _, o := range decodeObjects(t, goTool(t, "kustomize", "build", overlay)) {
		if o.kind() == "Deployment" || o.kind() == "StatefulSet" {
			workloads[o.name()] = true
		}
	}
	var named []string
	for _, c := range run.named("k8s_resource") {
		if !workloads[c.arg(0)] {
			t.Errorf("k8s_resource %q names no workload of %s", c.arg(0), overlay)
		}
		named = append(named, c.arg(0))
	}
	for _, svc := range services {
		if !slices.Contains(named, "factsync-"+svc) {
			t.Errorf("no k8s_resource for factsync-%s", svc)
		}
	}
}

func TestTiltfileRejectsUnknownMode(t *testing.T) {
	run := runTiltfile(t, "", map[string]string{"FACTSYNC_TILT": "swarm"})
	if run.err == nil || !strings.Contains(run.err.Error(), "FACTSYNC_TILT") {
		t.Fatalf("an unknown FACTSYNC_TILT must fail the Tiltfile, got %v", run.err)
	}
}
