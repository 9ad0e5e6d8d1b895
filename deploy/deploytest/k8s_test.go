package deploytest

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/natsauth"
	"go.yaml.in/yaml/v3"
)

// The kustomizations CI renders, and what each must add to the base.
var kustomizations = []struct {
	dir string
	// namespace every namespaced object must be in ("" = not set).
	namespace string
	// credentials: the overlay generates the NATS passwords Secret
	// (dev); otherwise it must come from outside (prod, base).
	credentials bool
}{
	{dir: "deploy/k8s/base"},
	{dir: "deploy/k8s/overlays/dev", namespace: "factsync-dev", credentials: true},
	{dir: "deploy/k8s/overlays/prod", namespace: "factsync"},
}

func TestKubernetesManifests(t *testing.T) {
	schemas := writeKubernetesSchemas(t)
	for _, k := range kustomizations {
		t.Run(filepath.Base(k.dir), func(t *testing.T) {
			rendered := goTool(t, "kustomize", "build", repoPath(t, k.dir))
			objs := decodeObjects(t, rendered)
			validateWithKubeconform(t, schemas, rendered, len(objs))
			m := indexObjects(objs)
			checkNamespace(t, objs, k.namespace)
			checkNATSCluster(t, m)
			checkServices(t, m)
			checkCredentials(t, m, k.credentials)
			checkRemotePeers(t, m, k.credentials)
		})
	}
}

// validateWithKubeconform runs the pinned kubeconform, strict and offline,
// and requires every object to be found valid.
func validateWithKubeconform(t *testing.T, schemas string, rendered []byte, want int) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(file, rendered, 0o644); err != nil {
		t.Fatal(err)
	}
	out := goTool(t, "kubeconform", "-strict", "-summary",
		"-kubernetes-version", schemaK8sVersion, "-schema-location", schemas, file)
	summary := regexp.MustCompile(`Valid: (\d+), Invalid: 0, Errors: 0, Skipped: 0`).FindSubmatch(out)
	if summary == nil || string(summary[1]) != fmt.Sprint(want) {
		t.Fatalf("kubeconform did not find all %d objects valid:\n%s", want, out)
	}
}

// object is one rendered Kubernetes object, decoded loosely.
type object map[string]any

func (o object) kind() string { s, _ := o["kind"].(string); return s }
func (o object) name() string { return o.str("metadata", "name") }

// get walks nested maps; ints index lists.
func (o object) get(path ...any) any {
	var cur any = map[string]any(o)
	for _, p := range path {
		switch key := p.(type) {
		case string:
			m, ok := cur.(map[string]any)
			if !ok {
				return nil
			}
			cur = m[key]
		case int:
			l, ok := cur.([]any)
			if !ok || key >= len(l) {
				return nil
			}
			cur = l[key]
		}
	}
	return cur
}

func (o object) str(path ...any) string { s, _ := o.get(path...).(string); return s }
func (o object) obj(path ...any) object { m, _ := o.get(path...).(map[string]any); return m }
func (o object) list(path ...any) []object {
	l, _ := o.get(path...).([]any)
	out := make([]object, 0, len(l))
	for _, v := range l {
		m, _ := v.(map[string]any)
		out = append(out, m)
	}
	return out
}

func decodeObjects(t *testing.T, rendered []byte) []object {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(rendered))
	var objs []object
	for {
		var o map[string]any
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("rendered manifests are not YAML: %v", err)
		}
		if o != nil {
			objs = append(objs, o)
		}
	}
	if len(objs) == 0 {
		t.Fatal("kustomize rendered no object")
	}
	return objs
}

// indexObjects keys objects by "Kind/name".
func indexObjects(objs []object) map[string]object {
	m := make(map[string]object, len(objs))
	for _, o := range objs {
		m[o.kind()+"/"+o.name()] = o
	}
	return m
}

var clusterScoped = []string{"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}

func checkNamespace(t *testing.T, objs []object, namespace string) {
	t.Helper()
	for _, o := range objs {
		if slices.Contains(clusterScoped, o.kind()) {
			continue
		}
		if got := o.str("metadata", "namespace"); got != namespace {
			t.Errorf("%s/%s is in namespace %q, want %q", o.kind(), o.name(), got, namespace)
		}
	}
}

// checkNATSCluster: three JetStream nodes with their own volumes, stable
// names from a headless Service, the config from a Secret, and the same
// nats-server release the tests embed.
func checkNATSCluster(t *testing.T, m map[string]object) {
	t.Helper()
	sts, ok := m["StatefulSet/nats"]
	if !ok {
		t.Fatal("no StatefulSet nats")
	}
	if got := sts.get("spec", "replicas"); got != 3 {
		t.Errorf("StatefulSet nats has %v replicas, want 3 (R3 streams)", got)
	}
	if len(sts.list("spec", "volumeClaimTemplates")) == 0 {
		t.Error("StatefulSet nats has no volumeClaimTemplates: JetStream would lose its store with the pod")
	}
	headless := m["Service/"+sts.str("spec", "serviceName")]
	if headless == nil || headless.str("spec", "clusterIP") != "None" {
		t.Errorf("StatefulSet nats names serviceName %q, which is not a headless Service", sts.str("spec", "serviceName"))
	}
	pod := sts.obj("spec", "template", "spec")
	c := pod.list("containers")[0]
	want := "nats:" + strings.TrimPrefix(goList(t, "-m", "-f", "{{.Version}}", "github.com/nats-io/nats-server/v2"), "v") + "-alpine"
	if c.str("image") != want {
		t.Errorf("NATS image is %q; keep it at %q, the nats-server the tests embed (go.mod)", c.str("image"), want)
	}
	for _, v := range pod.list("volumes") {
		if v.str("name") == "config" && !strings.HasPrefix(v.str("secret", "secretName"), "nats-config") {
			t.Errorf("the NATS config (users and permissions) must come from the Secret nats-config, not %v", v)
		}
	}
	checkEnvOrder(t, "StatefulSet/nats", c)
	checkPDB(t, m, "nats", sts)
}

// checkServices: one Deployment per service running `serve <name>`,
// probed on /readyz and /healthz, sized, hardened, with a PDB.
func checkServices(t *testing.T, m map[string]object) {
	t.Helper()
	for _, svc := range services {
		name := "factsync-" + svc
		d, ok := m["Deployment/"+name]
		if !ok {
			t.Errorf("no Deployment %s", name)
			continue
		}
		pod := d.obj("spec", "template", "spec")
		cs := pod.list("containers")
		if len(cs) != 1 {
			t.Errorf("%s has %d containers, want 1", name, len(cs))
			continue
		}
		c := cs[0]
		if args := fmt.Sprint(c.get("args")); args != fmt.Sprint([]any{"serve", svc}) {
			t.Errorf("%s runs args %s, want [serve %s]", name, args, svc)
		}
		if p := c.str("readinessProbe", "httpGet", "path"); p != "/readyz" {
			t.Errorf("%s readiness probe path is %q, want /readyz", name, p)
		}
		if p := c.str("livenessProbe", "httpGet", "path"); p != "/healthz" {
			t.Errorf("%s liveness probe path is %q, want /healthz", name, p)
		}
		for _, bound := range []string{"requests", "limits"} {
			for _, res := range []string{"cpu", "memory"} {
				if c.get("resources", bound, res) == nil {
					t.Errorf("%s has no resources.%s.%s", name, bound, res)
				}
			}
		}
		if pod.get("securityContext", "runAsNonRoot") != true || c.get("securityContext", "readOnlyRootFilesystem") != true {
			t.Errorf("%s must run as non-root on a read-only root filesystem", name)
		}
		env := envOf(c)
		wantUser := "services"
		if svc == "guard" {
			wantUser = "guard"
		}
		if env["FACTSYNC_NATS_USER"].str("value") != wantUser {
			t.Errorf("%s connects as NATS user %q, want %q", name, env["FACTSYNC_NATS_USER"].str("value"), wantUser)
		}
		if key := env["FACTSYNC_NATS_PASSWORD"].str("valueFrom", "secretKeyRef", "key"); key != wantUser {
			t.Errorf("%s takes its NATS password from key %q, want %q", name, key, wantUser)
		}
		if svc != "guard" && env["FACTSYNC_MESH_INBOX_PREFIX"].str("value") != natsauth.ServicesMeshInbox {
			t.Errorf("%s sends its requests to remote peers with reply prefix %q, want %q, the one inbox their users may answer on",
				name, env["FACTSYNC_MESH_INBOX_PREFIX"].str("value"), natsauth.ServicesMeshInbox)
		}
		for _, k := range []string{"FACTSYNC_NATS", "FACTSYNC_HTTP", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"} {
			if _, ok := env[k]; !ok {
				t.Errorf("%s does not set %s", name, k)
			}
		}
		checkEnvOrder(t, "Deployment/"+name, c)
		checkPDB(t, m, name, d)
	}
}

func envOf(c object) map[string]object {
	env := map[string]object{}
	for _, e := range c.list("env") {
		env[e.str("name")] = e
	}
	return env
}

var envReference = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkEnvOrder: Kubernetes expands $(VAR) only from variables defined
// earlier in the list; a later one is left as the literal text.
func checkEnvOrder(t *testing.T, what string, c object) {
	t.Helper()
	defined := map[string]bool{}
	for _, e := range c.list("env") {
		for _, ref := range envReference.FindAllStringSubmatch(e.str("value"), -1) {
			if !defined[ref[1]] {
				t.Errorf("%s: env %s refers to $(%s), which is not defined before it", what, e.str("name"), ref[1])
			}
		}
		defined[e.str("name")] = true
	}
}

// checkPDB: a PodDisruptionBudget named like the workload selects its pods.
func checkPDB(t *testing.T, m map[string]object, name string, workload object) {
	t.Helper()
	pdb, ok := m["PodDisruptionBudget/"+name]
	if !ok {
		t.Errorf("no PodDisruptionBudget %s", name)
		return
	}
	podLabels := workload.obj("spec", "template", "metadata", "labels")
	sel := pdb.obj("spec", "selector", "matchLabels")
	if len(sel) == 0 {
		t.Errorf("PodDisruptionBudget %s selects nothing", name)
	}
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("PodDisruptionBudget %s selects %s=%v, which the pods of %s do not carry", name, k, v, name)
		}
	}
}

// natsUsers are the deployed peer's own NATS users, one per role
// (natsauth.DeployedUsers without remote peers): the passwords Secret
// factsync-nats-credentials holds exactly these keys, and every workload
// refers only to them.
var natsUsers = func() []string {
	users, err := natsauth.DeployedUsers()
	if err != nil {
		panic(err)
	}
	names := make([]string, len(users))
	for i, u := range users {
		names[i] = u.Name
	}
	return names
}()

func checkCredentials(t *testing.T, m map[string]object, generated bool) {
	t.Helper()
	var secret object
	for key, o := range m {
		if strings.HasPrefix(key, "Secret/factsync-nats-credentials") {
			secret = o
		}
	}
	if !generated {
		if secret != nil {
			t.Error("this kustomization must not carry NATS passwords: the Secret factsync-nats-credentials comes from the operator's secret store")
		}
	} else {
		if secret == nil {
			t.Fatal("no Secret factsync-nats-credentials")
		}
		var keys []string
		for k := range secret.obj("data") {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		want := slices.Sorted(slices.Values(natsUsers))
		if !slices.Equal(keys, want) {
			t.Errorf("Secret factsync-nats-credentials has keys %v, want %v", keys, want)
		}
	}
	for key, o := range m {
		if o.kind() != "Deployment" && o.kind() != "StatefulSet" {
			continue
		}
		for _, c := range o.list("spec", "template", "spec", "containers") {
			for _, e := range c.list("env") {
				ref := e.obj("valueFrom", "secretKeyRef")
				if ref == nil {
					continue
				}
				if !strings.HasPrefix(ref.str("name"), "factsync-nats-credentials") || !slices.Contains(natsUsers, ref.str("key")) {
					t.Errorf("%s: env %s refers to secret %s key %s, which is not a NATS user's password", key, e.str("name"), ref.str("name"), ref.str("key"))
				}
				if generated && ref.str("name") != secret.name() {
					t.Errorf("%s: env %s refers to secret %s, but the overlay generates %s", key, e.str("name"), ref.str("name"), secret.name())
				}
			}
		}
	}
}

// checkRemotePeers: the NATS config Secret carries the permissions file
// of the kustomization (the dev overlay's, with the example remote peers,
// replaces the base's), and the NATS pods read the remote peers'
// passwords from the Secret factsync-nats-peer-credentials, which the dev
// overlay generates with one key per example peer and the others leave
// to the operator.
func checkRemotePeers(t *testing.T, m map[string]object, generated bool) {
	t.Helper()
	wantFile, peers := "deploy/k8s/base/nats/permissions.conf", []events.PeerID(nil)
	if generated {
		wantFile, peers = devPermissions, examplePeers
	}
	var config, credentials object
	for key, o := range m {
		switch {
		case strings.HasPrefix(key, "Secret/nats-config"):
			config = o
		case strings.HasPrefix(key, "Secret/factsync-nats-peer-credentials"):
			credentials = o
		}
	}
	if config == nil {
		t.Fatal("no Secret nats-config")
	}
	got, err := base64.StdEncoding.DecodeString(config.str("data", "permissions.conf"))
	if err != nil || string(got) != string(readRepoFile(t, wantFile)) {
		t.Errorf("Secret nats-config does not carry %s as permissions.conf (%v)", wantFile, err)
	}

	var refs []string
	for _, c := range m["StatefulSet/nats"].list("spec", "template", "spec", "containers") {
		for _, e := range c.list("envFrom") {
			refs = append(refs, e.str("secretRef", "name"))
		}
	}
	if len(refs) != 1 || !strings.HasPrefix(refs[0], "factsync-nats-peer-credentials") {
		t.Fatalf("the NATS pods take environment from secrets %v, want only factsync-nats-peer-credentials (the remote peers' passwords)", refs)
	}
	if !generated {
		if credentials != nil {
			t.Error("this kustomization must not carry remote peers' passwords: the Secret factsync-nats-peer-credentials comes from the operator's secret store")
		}
		return
	}
	if credentials == nil || refs[0] != credentials.name() {
		t.Fatalf("the NATS pods read remote peers' passwords from %s, but the overlay generates %v", refs[0], credentials.name())
	}
	var keys, want []string
	for k := range credentials.obj("data") {
		keys = append(keys, k)
	}
	for _, p := range peers {
		want = append(want, strings.TrimPrefix(natsauth.PasswordVariable(natsauth.RemotePeerUser(p)), "$"))
	}
	if slices.Sort(keys); !slices.Equal(keys, slices.Sorted(slices.Values(want))) {
		t.Errorf("Secret factsync-nats-peer-credentials has keys %v, want the password variables of %s: %v", keys, wantFile, want)
	}
}
