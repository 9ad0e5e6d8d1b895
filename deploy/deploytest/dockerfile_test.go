package deploytest

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"golang.org/x/mod/modfile"
	"golang.org/x/mod/semver"
)

// lintDockerfile parses a Dockerfile with BuildKit's own parser and runs
// every BuildKit lint rule that works on the parsed instructions
// (experimental ones included), failing on any warning. It returns the
// stages for the factsync-specific rules.
func lintDockerfile(t *testing.T, rel string) []instructions.Stage {
	t.Helper()
	res, err := parser.Parse(bytes.NewReader(readRepoFile(t, rel)))
	if err != nil {
		t.Fatalf("%s does not parse: %v", rel, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s:%d: %s", rel, w.Location.Start.Line, w.Short)
	}
	lint := linter.New(&linter.Config{
		ExperimentalAll: true,
		Warn: func(rule, _, url, msg string, loc []parser.Range) {
			line := 0
			if len(loc) > 0 {
				line = loc[0].Start.Line
			}
			t.Errorf("%s:%d: %s: %s (%s)", rel, line, rule, msg, url)
		},
	})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	declared := map[string]bool{"BUILDPLATFORM": true, "TARGETPLATFORM": true, "TARGETOS": true, "TARGETARCH": true}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			declared[kv.Key] = true
		}
	}
	for _, s := range stages {
		checkBaseImage(t, rel, s, declared)
	}
	return stages
}

// checkBaseImage: every base image is a pinned tag (or an earlier stage),
// and the ARGs it uses are declared before the first FROM.
func checkBaseImage(t *testing.T, rel string, s instructions.Stage, declared map[string]bool) {
	t.Helper()
	for _, word := range strings.FieldsFunc(s.BaseName+" "+s.Platform, func(r rune) bool {
		return !(r == '_' || r == '$' || r == '{' || r == '}' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) {
		name := strings.Trim(word, "${}")
		if strings.HasPrefix(word, "$") && !declared[name] {
			t.Errorf("%s: FROM %s uses ARG %s, which is not declared before the first FROM", rel, s.BaseName, name)
		}
	}
	image := s.BaseName
	if _, tag, ok := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":"); !ok || tag == "latest" {
		t.Errorf("%s: base image %q is not pinned to a release tag", rel, image)
	}
}

// finalStage checks what every factsync image must be: a non-root user,
// factsync as the exec-form entrypoint, the status port.
func finalStage(t *testing.T, rel string, s instructions.Stage) {
	t.Helper()
	var user string
	var entrypoint []string
	var env []string
	for _, cmd := range s.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				t.Errorf("%s: ENTRYPOINT must be the exec (JSON) form: there is no shell in the image", rel)
			}
			entrypoint = c.CmdLine
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env = append(env, kv.Key+"="+kv.Value)
			}
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "0" || u == "root" {
		t.Errorf("%s: the final stage runs as %q; it must name a non-root USER", rel, user)
	}
	if len(entrypoint) != 1 || !strings.HasSuffix(entrypoint[0], "/factsync") {
		t.Errorf("%s: ENTRYPOINT is %v, want the factsync binary alone (arguments pick the service)", rel, entrypoint)
	}
	if !slices.Contains(env, "FACTSYNC_HTTP=:8080") {
		t.Errorf("%s: the image must set FACTSYNC_HTTP=:8080, the port the probes use", rel)
	}
	if !strings.HasPrefix(s.BaseName, "gcr.io/distroless/static") && s.BaseName != "scratch" {
		t.Errorf("%s: runtime base %q is neither distroless/static nor scratch", rel, s.BaseName)
	}
}

func TestDockerfile(t *testing.T) {
	const rel = "deploy/Dockerfile"
	stages := lintDockerfile(t, rel)
	if len(stages) < 2 {
		t.Fatalf("%s has %d stage(s); it must build in one stage and run in another", rel, len(stages))
	}
	finalStage(t, rel, stages[len(stages)-1])

	build := stages[0]
	var script strings.Builder
	var goVersion string
	for _, cmd := range build.Commands {
		switch c := cmd.(type) {
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				fmt.Fprintf(&script, "%s=%s\n", kv.Key, kv.Value)
			}
		case *instructions.RunCommand:
			fmt.Fprintln(&script, strings.Join(c.CmdLine, " "))
		}
	}
	if !strings.Contains(script.String(), "CGO_ENABLED=0") || !strings.Contains(script.String(), "go build") {
		t.Errorf("%s: the build stage must run go build with CGO_ENABLED=0 (a static binary for distroless/static)", rel)
	}
	if !strings.Contains(script.String(), "./cmd/factsync") {
		t.Errorf("%s: the build stage does not build ./cmd/factsync", rel)
	}
	sc := bufio.NewScanner(bytes.NewReader(readRepoFile(t, rel)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "ARG GO_VERSION="); ok {
			goVersion = v
		}
	}
	mod, err := modfile.ParseLax("go.mod", readRepoFile(t, "go.mod"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if goVersion == "" || semver.Compare("v"+goVersion, "v"+mod.Go.Version) < 0 {
		t.Errorf("%s builds with Go %q, older than go.mod's go %s", rel, goVersion, mod.Go.Version)
	}
	checkDockerignore(t)
}

// checkDockerignore: the build context holds every directory of a package
// the binary is built from, and nothing else of the repository.
func checkDockerignore(t *testing.T) {
	t.Helper()
	rules := strings.Fields(string(readRepoFile(t, ".dockerignore")))
	if !slices.Contains(rules, "*") {
		t.Error(".dockerignore must start from excluding everything ('*') and list what the build needs")
	}
	module := goList(t, "-m", "-f", "{{.Path}}", "github.com/factsync/factsync")
	deps := strings.Fields(goList(t, "-e", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./cmd/factsync"))
	for _, p := range deps {
		rel, ok := strings.CutPrefix(p, module+"/")
		if !ok {
			continue
		}
		top, _, _ := strings.Cut(rel, "/")
		if !slices.Contains(rules, "!"+top+"/") {
			t.Errorf(".dockerignore leaves out %s/, which the binary imports (%s)", top, p)
		}
	}
	for _, f := range []string{"!go.mod", "!go.sum"} {
		if !slices.Contains(rules, f) {
			t.Errorf(".dockerignore must keep %s", strings.TrimPrefix(f, "!"))
		}
	}
}

func TestTiltDockerfile(t *testing.T) {
	const rel = "tilt/Dockerfile"
	stages := lintDockerfile(t, rel)
	finalStage(t, rel, stages[len(stages)-1])
}
