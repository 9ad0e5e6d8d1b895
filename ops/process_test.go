package ops_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binary builds factsync once per test binary run.
var binary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "factsync-ops-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "factsync")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/factsync/factsync/cmd/factsync").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := binary(); err == nil {
		_ = os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

// freePort returns a port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// process is one running `factsync` process.
type process struct {
	name string
	cmd  *exec.Cmd
	http string // status address
	log  *bytes.Buffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	*bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

// start runs factsync with args plus --http on a free port, and stops it
// (SIGTERM, then SIGKILL) when the test ends; its output is logged if the
// test failed.
func start(t *testing.T, name string, env []string, args ...string) *process {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{name: name, http: "127.0.0.1:" + strconv.Itoa(freePort(t)), log: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append(args, "--http", p.http, "--log-level", "info")...)
	p.cmd.Env = append(os.Environ(), env...)
	out := &lockedBuffer{Buffer: p.log}
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			out.mu.Lock()
			t.Logf("--- %s output:\n%s", name, lastLines(p.log.String(), 40))
			out.mu.Unlock()
		}
	})
	return p
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// stop ends the process gracefully, or kills it after 15 s.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill ends the process with SIGKILL: no drain, no lease released, no
// checkpoint written.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

var client = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// waitReady polls /readyz until it answers 200.
func (p *process) waitReady(t *testing.T, within time.Duration) {
	t.Helper()
	eventually(t, within, p.name+" ready", func() bool {
		select {
		case <-p.done:
			t.Fatalf("%s exited before it was ready", p.name)
		default:
		}
		resp, err := client.Get("http://" + p.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// metric sums the samples of a Prometheus metric family on /metrics; -1
// when the process does not report it.
func (p *process) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := client.Get("http://" + p.http + "/metrics")
	if err != nil {
		t.Fatalf("%s /metrics: %v", p.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum, found := 0.0, false
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum, found = sum+v, true
		}
	}
	if !found {
		return -1
	}
	return sum
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// users are the role users an embedded server wrote to its data directory.
type users struct {
	Client struct{ Name, Password string } `json:"client"`
}

func readUsers(t *testing.T, path string) users {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var u users
	if err := json.Unmarshal(b, &u); err != nil {
		t.Fatal(err)
	}
	return u
}
