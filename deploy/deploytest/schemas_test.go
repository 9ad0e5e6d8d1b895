package deploytest

import (
	"compress/gzip"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The Kubernetes schemas kubeconform validates against. kubeconform
// downloads them from GitHub by default, and CI has no network but the Go
// module proxy. kustomize's kyaml module (pinned in tools/go.mod with
// kustomize) ships the OpenAPI definitions of Kubernetes v1.21.2, which it
// uses for merge keys; these are turned here into the "standalone strict"
// JSON schemas kubeconform reads, as kubeconform's own openapi2jsonschema
// script does: definitions inlined, IntOrString and Quantity accepting
// strings and numbers, and no property outside the schema allowed.
//
// Strictness against v1.21 means a field added to Kubernetes later is
// reported as unknown: the manifests use only fields that exist since
// 1.21, so they apply to every supported cluster.
const (
	kyamlModule       = "sigs.k8s.io/kustomize/kyaml"
	kyamlOpenAPIData  = "openapi/kubernetesapi/data/kubernetes-openapi-union-v1.21.2.bundle-v1.json.gz"
	schemaK8sVersion  = "1.21.2"
	kubeconformLayout = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
)

// writeKubernetesSchemas writes one schema file per Kubernetes kind into a
// temporary directory and returns kubeconform's -schema-location for it.
func writeKubernetesSchemas(t *testing.T) string {
	t.Helper()
	dir := moduleDir(t, kyamlModule)
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(kyamlOpenAPIData)))
	if err != nil {
		t.Fatalf("the Kubernetes OpenAPI definitions shipped with %s: %v", kyamlModule, err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var bundle struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.NewDecoder(zr).Decode(&bundle); err != nil {
		t.Fatalf("decode %s: %v", kyamlOpenAPIData, err)
	}
	if len(bundle.Definitions) < 100 {
		t.Fatalf("%s holds %d definitions; expected the whole Kubernetes API", kyamlOpenAPIData, len(bundle.Definitions))
	}

	defs := make(map[string]any, len(bundle.Definitions))
	for name, def := range bundle.Definitions {
		defs[name] = strictSchema(name, def)
	}
	out := t.TempDir()
	written := 0
	for name, def := range bundle.Definitions {
		gvks, _ := def["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk, _ := g.(map[string]any)
			group, _ := gvk["group"].(string)
			version, _ := gvk["version"].(string)
			kind, _ := gvk["kind"].(string)
			schema := map[string]any{
				"$ref":        "#/definitions/" + name,
				"definitions": defs,
			}
			b, err := json.Marshal(schema)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(out, schemaFileName(group, version, kind)), b, 0o644); err != nil {
				t.Fatal(err)
			}
			written++
		}
	}
	if written == 0 {
		t.Fatal("no Kubernetes kind found in the OpenAPI definitions")
	}
	return filepath.Join(out, kubeconformLayout)
}

// schemaFileName follows kubeconform's layout: kind, then the first label
// of the API group, then the version, all lower case.
func schemaFileName(group, version, kind string) string {
	suffix := "-" + strings.ToLower(version)
	if group != "" {
		suffix = "-" + strings.ToLower(strings.Split(group, ".")[0]) + suffix
	}
	return strings.ToLower(kind) + suffix + ".json"
}

// strictSchema rewrites one OpenAPI definition (in place) for kubeconform.
func strictSchema(name string, def map[string]any) map[string]any {
	switch name {
	case "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
	case "io.k8s.apimachinery.pkg.api.resource.Quantity":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
	}
	forbidUnknown(def)
	return def
}

// forbidUnknown sets additionalProperties false on every object schema
// that lists its properties and says nothing about others.
func forbidUnknown(node any) {
	switch n := node.(type) {
	case map[string]any:
		if _, has := n["properties"]; has {
			if _, set := n["additionalProperties"]; !set {
				n["additionalProperties"] = false
			}
		}
		for k, v := range n {
			if strings.HasPrefix(k, "x-kubernetes-") {
				continue
			}
			forbidUnknown(v)
		}
	case []any:
		for _, v := range n {
			forbidUnknown(v)
		}
	}
}

// moduleDir downloads a module of the workspace (a no-op when it is in the
// module cache) and returns its directory. `go list -m` alone names the
// directory without fetching the module's files, which a fresh cache does
// not hold yet.
func moduleDir(t *testing.T, module string) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", module)
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s", module, err, out)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s: no directory (%v %s)", module, err, m.Error)
	}
	return m.Dir
}
