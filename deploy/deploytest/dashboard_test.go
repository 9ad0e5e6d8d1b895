package deploytest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// metricRow is one row of the metrics table in docs/operations.md.
type metricRow struct{ otel, prometheus, status string }

var metricTableRow = regexp.MustCompile("^\\| `([a-z0-9_.]+)` \\| `([a-z0-9_]+)` \\|[^|]*\\|[^|]*\\| (emitted|planned) \\|$")

func documentedMetrics(t *testing.T) map[string]metricRow {
	t.Helper()
	rows := map[string]metricRow{}
	for _, line := range strings.Split(string(readRepoFile(t, "docs/operations.md")), "\n") {
		if m := metricTableRow.FindStringSubmatch(line); m != nil {
			rows[m[2]] = metricRow{otel: m[1], prometheus: m[2], status: m[3]}
		}
	}
	if len(rows) == 0 {
		t.Fatal("docs/operations.md has no metrics table")
	}
	return rows
}

// A metric in PromQL: a name followed by its label matchers.
var promSelector = regexp.MustCompile(`\b([a-z_][a-z0-9_]*)\{`)

// TestDashboardMetrics: the dashboard queries only documented metrics, and
// every metric documented as emitted is named in the code.
func TestDashboardMetrics(t *testing.T) {
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(readRepoFile(t, "deploy/grafana/factsync.json"), &dash); err != nil {
		t.Fatalf("deploy/grafana/factsync.json: %v", err)
	}
	docs := documentedMetrics(t)
	queried := 0
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			for _, m := range promSelector.FindAllStringSubmatch(target.Expr, -1) {
				name := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m[1], "_bucket"), "_sum"), "_count")
				if _, ok := docs[name]; !ok {
					t.Errorf("panel %q queries %s, which docs/operations.md does not list", p.Title, m[1])
				}
				queried++
			}
		}
	}
	if queried == 0 {
		t.Fatal("the dashboard queries no metric")
	}

	code := goSourceText(t, "services", "shared")
	for _, row := range docs {
		if row.status == "emitted" && !strings.Contains(code, `"`+row.otel+`"`) {
			t.Errorf("docs/operations.md says %s is emitted, but no code under services/ or shared/ names it", row.otel)
		}
	}
}

// goSourceText concatenates the non-test Go files under the given
// top-level directories.
func goSourceText(t *testing.T, dirs ...string) string {
	t.Helper()
	var b strings.Builder
	for _, d := range dirs {
		err := filepath.WalkDir(repoPath(t, d), func(path string, e os.DirEntry, err error) error {
			if err != nil || e.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			src, err := os.ReadFile(path)
			b.Write(src)
			return err
		})
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	return b.String()
}
