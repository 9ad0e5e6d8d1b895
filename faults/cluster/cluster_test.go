// Package cluster runs the guard and the journal on a three-node JetStream
// cluster with R3 streams, each node a process of its own, and kills nodes
// with SIGKILL while facts are ingested: the stream leaders first. It
// checks that no fact INGRESS acknowledged is lost or stored twice, and
// that the replicas the killed nodes rejoin hold every fact.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/faults/internal/stack"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func long() bool { return os.Getenv("FACTSYNC_LONG") == "1" }

// nodeEnv, when set in the environment, makes the test binary run one
// cluster node (a nodeSpec in JSON) instead of the tests.
const nodeEnv = "FACTSYNC_CLUSTER_NODE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(nodeEnv); spec != "" {
		os.Exit(runNode(spec))
	}
	os.Exit(m.Run())
}

// nodeSpec is what a node process needs; a restarted node gets the same.
type nodeSpec struct {
	Name        string
	StoreDir    string
	Port        int
	ClusterPort int
	Routes      []string
}

// runNode runs one embedded cluster node, with the stack's role users and
// fsync before every ack (the default), until it is killed or its stdin
// closes because the test is over.
func runNode(raw string) int {
	var spec nodeSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "node spec: %v\n", err)
		return 2
	}
	// The server's own log starts only once it runs; these lines show
	// how far a node that never answers got.
	fmt.Fprintf(os.Stderr, "%s node %s: starting\n", time.Now().Format(time.TimeOnly), spec.Name)
	users, err := natsauth.Apply(stack.RoleUsers()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{
		StoreDir: spec.StoreDir, Port: spec.Port, ServerName: spec.Name,
		Cluster: &bus.ClusterConfig{Name: "faults", Port: spec.ClusterPort, Routes: spec.Routes},
		// The server's log goes to this process's stderr, the node's
		// log file, for a failing test to show.
		Configure: func(o *server.Options) { users(o); o.NoLog = false },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ns.ConfigureLogger()
	fmt.Fprintf(os.Stderr, "%s node %s: listening\n", time.Now().Format(time.TimeOnly), spec.Name)
	_, _ = io.Copy(io.Discard, os.Stdin)
	ns.Shutdown()
	ns.WaitForShutdown()
	return 0
}

// node is one node process.
type node struct {
	spec   nodeSpec
	log    string // the node's stderr, appended across restarts
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{} // closed once cmd has been reaped
}

func (n *node) start(t *testing.T) {
	t.Helper()
	spec, _ := json.Marshal(n.spec)
	logFile, err := os.OpenFile(n.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	n.cmd = exec.Command(os.Args[0], "-test.run=^$")
	n.cmd.Env = append(os.Environ(), nodeEnv+"="+string(spec))
	n.cmd.Stdout, n.cmd.Stderr = logFile, logFile
	if n.stdin, err = n.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(n.cmd, n.exited)
}

// kill sends SIGKILL and reaps the process.
func (n *node) kill() {
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
	_ = n.stdin.Close()
}

// state says whether the process runs, or how it ended.
func (n *node) state() string {
	select {
	case <-n.exited:
		return n.cmd.ProcessState.String()
	default:
		return "running"
	}
}

// cluster is three node processes on loopback.
type cluster struct {
	nodes []*node
	url   string // every node's client URL
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{}
	var routes, urls []string
	for i := range 3 {
		n := &node{spec: nodeSpec{Name: fmt.Sprintf("n%d", i), StoreDir: t.TempDir(), Port: bustest.FreePort(t), ClusterPort: bustest.FreePort(t)},
			log: filepath.Join(t.TempDir(), "node.log")}
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", n.spec.ClusterPort))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.spec.Port))
		c.nodes = append(c.nodes, n)
	}
	c.url = strings.Join(urls, ",")
	for _, n := range c.nodes {
		n.spec.Routes = routes
		n.start(t)
		t.Cleanup(n.kill)
	}
	return c
}

// named returns the node with the server name name.
func (c *cluster) named(t *testing.T, name string) *node {
	t.Helper()
	for _, n := range c.nodes {
		if n.spec.Name == name {
			return n
		}
	}
	t.Fatalf("no node is named %q", name)
	return nil
}

// logs is the tail of every node's log, for a failure message.
func (c *cluster) logs() string {
	var b strings.Builder
	for _, n := range c.nodes {
		raw, _ := os.ReadFile(n.log)
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		fmt.Fprintf(&b, "--- node %s, %s (last %d lines)\n%s\n", n.spec.Name, n.state(), min(30, len(lines)), strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
	return b.String()
}

// streamState is what a stream's leader reports of it.
func streamState(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	return st.Info(ctx)
}

// current reports whether the stream has a leader other than not and two
// replicas that are current, with no lag.
func current(info *jetstream.StreamInfo, not string) bool {
	if info.Cluster == nil || info.Cluster.Leader == "" || info.Cluster.Leader == not || len(info.Cluster.Replicas) != 2 {
		return false
	}
	for _, r := range info.Cluster.Replicas {
		if !r.Current || r.Lag != 0 || r.Offline {
			return false
		}
	}
	return true
}

// The guard and the journal run on a three-node cluster with R3 streams.
// While a client ingests facts, one node at a time is killed with
// SIGKILL and restarted: the INGRESS leader, then the JOURNAL leader, then
// (in the long run) a random node, in turn. Every fact whose INGRESS
// publish was acknowledged ends in JOURNAL exactly once, the journal's
// documents equal a clean fold of JOURNAL, and JOURNAL still holds every
// fact after its leader is killed once more at the end.
func TestClusterKillNodeDuringIngest(t *testing.T) {
	facts, kills := 2000, 2
	if long() {
		facts, kills = 20_000, 9
	}
	const perBatch = 20
	seed := mrand.Uint64()
	rng := mrand.New(mrand.NewPCG(seed, 3))
	t.Logf("seed %d: %d facts, %d kills", seed, facts, kills)
	began := time.Now()
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// The services provision their R3 streams once the nodes have met
	// and elected a meta leader.
	guardUser := stack.Users[natsauth.RoleGuard]
	// The connection waits for the nodes to listen.
	ops := bustest.Connect(t, c.url, nats.UserInfo(guardUser.Name, guardUser.Password), nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1))
	opsJS, err := jetstream.New(ops)
	if err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, time.Minute, func() bool {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := opsJS.AccountInfo(actx)
		return err == nil
	}, "the cluster elects a meta leader; nodes:\n%s", c.logs())
	t.Logf("cluster up after %s", time.Since(began).Round(time.Millisecond))
	// A short AckWait: an ack lost with a killed consumer leader is
	// redelivered after 5 s instead of 30.
	s := stack.StartServices(t, c.url, 3, guard.Config{AckWait: 5 * time.Second})

	d := stack.NewDevice(t)
	auth := d.Authority()
	var batches [][]*events.Fact
	for i := 0; i < facts; i += perBatch {
		var b []*events.Fact
		for j := i; j < min(i+perBatch, facts); j++ {
			doc := fmt.Sprintf("d%d", rng.IntN(200))
			b = append(b, d.Put(t, "cluster", doc, map[string]any{"v": j, fmt.Sprintf("f%d", rng.IntN(5)): j}))
		}
		batches = append(batches, b)
	}
	// Kill k happens in the k-th part of the run, and the node comes
	// back later in the same part, so at most one node is down at a time
	// and two of three always form a quorum.
	type outage struct{ kill, restart int }
	part := len(batches) / kills
	outages := make([]outage, kills)
	for k := range outages {
		from := k * part
		outages[k].kill = from + 1 + rng.IntN(part/3)
		outages[k].restart = outages[k].kill + 1 + rng.IntN(part/3)
	}

	client := s.ConnectAs(t, stack.Users[natsauth.RoleClient])
	acked := map[events.FactID]bool{}
	k, retries, failed := 0, 0, 0
	var down *node
	for i := 0; i < len(batches); {
		if k < kills && down == nil && i == outages[k].kill {
			down = c.victim(ctx, t, opsJS, k, rng)
			t.Logf("batch %d: kill -9 node %s", i, down.spec.Name)
			down.kill()
		}
		if down != nil && i == outages[k].restart {
			t.Logf("batch %d: restart node %s", i, down.spec.Name)
			down.start(t)
			// The next kill waits for the node to catch up, or two
			// nodes could be behind at once.
			bustest.Eventually(t, 2*time.Minute, func() bool {
				for _, name := range []string{events.StreamIngress, events.StreamJournal} {
					info, err := streamState(ctx, opsJS, name)
					if err != nil || !current(info, "") {
						return false
					}
				}
				return true
			}, "node %s current again on INGRESS and JOURNAL; nodes:\n%s", down.spec.Name, c.logs())
			down = nil
			k++
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := client.JS.Publish(pctx, events.IngressFactSubject(auth), stack.Batch([][]byte{d.Token}, batches[i]...),
			jetstream.WithMsgID(fmt.Sprintf("batch-%d-%d", seed, i)), jetstream.WithRetryAttempts(0))
		cancel()
		if err != nil {
			failed++
			if retries++; retries > 20 {
				t.Fatalf("batch %d not acknowledged after %d tries: %v; nodes:\n%s", i, retries, err, c.logs())
			}
			// Without a leader the stream answers nothing; retry once
			// it has one again.
			c.leader(ctx, t, opsJS, events.StreamIngress)
			continue
		}
		for _, f := range batches[i] {
			acked[f.ID] = true
		}
		i++
		retries = 0
	}
	t.Logf("ingested %d facts in %s (%d publishes failed and were retried)", len(acked), time.Since(began).Round(time.Millisecond), failed)

	bustest.Eventually(t, 3*time.Minute, func() bool {
		info, err := streamState(ctx, opsJS, events.StreamIngress)
		return err == nil && info.State.Msgs == 0
	}, "INGRESS drained by the guard; nodes:\n%s", c.logs())
	t.Logf("INGRESS drained after %s", time.Since(began).Round(time.Millisecond))
	stored := checkJournal(ctx, t, opsJS, auth, acked)

	want := map[string]events.Document{}
	clean := fold.New()
	for _, f := range stored {
		clean.Apply(f)
	}
	for doc := range clean.Documents("cluster") {
		want[doc.ID] = doc
	}
	bustest.Eventually(t, 2*time.Minute, func() bool {
		got, err := stack.QueryDocuments(ctx, client.Conn, d, "cluster")
		if err != nil || len(got) != len(want) {
			return false
		}
		for id, doc := range want {
			a, _ := json.Marshal(doc)
			b, _ := json.Marshal(got[id])
			if !bytes.Equal(a, b) {
				return false
			}
		}
		return true
	}, "the journal's %d documents equal a clean fold", len(want))

	// The replicas hold what the leader acknowledged: with the JOURNAL
	// leader killed, the new leader serves every fact.
	info, err := streamState(ctx, opsJS, events.StreamJournal)
	if err != nil {
		t.Fatal(err)
	}
	leader := c.named(t, info.Cluster.Leader)
	leader.kill()
	bustest.Eventually(t, time.Minute, func() bool {
		info, err := streamState(ctx, opsJS, events.StreamJournal)
		return err == nil && info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != leader.spec.Name
	}, "JOURNAL elects a leader other than the killed %s", leader.spec.Name)
	checkJournal(ctx, t, opsJS, auth, acked)
	t.Logf("JOURNAL complete on the new leader after killing %s; %s in all", leader.spec.Name, time.Since(began).Round(time.Millisecond))
}

// victim picks the node to kill for outage k: the INGRESS leader, the
// JOURNAL leader, then a random node, in turn.
func (c *cluster) victim(ctx context.Context, t *testing.T, js jetstream.JetStream, k int, rng *mrand.Rand) *node {
	t.Helper()
	stream := []string{events.StreamIngress, events.StreamJournal, ""}[k%3]
	if stream == "" {
		return c.nodes[rng.IntN(len(c.nodes))]
	}
	return c.named(t, c.leader(ctx, t, js, stream))
}

// leader waits for stream to have a leader and returns its name.
func (c *cluster) leader(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string) string {
	t.Helper()
	var leader string
	bustest.Eventually(t, time.Minute, func() bool {
		info, err := streamState(ctx, js, stream)
		if err != nil || info.Cluster == nil {
			return false
		}
		leader = info.Cluster.Leader
		return leader != ""
	}, "%s has a leader; nodes:\n%s", stream, c.logs())
	return leader
}

// checkJournal reads JOURNAL and fails unless every acknowledged fact is
// in it exactly once. It returns what JOURNAL holds.
func checkJournal(ctx context.Context, t *testing.T, js jetstream.JetStream, auth events.AuthorityID, acked map[events.FactID]bool) []*events.Fact {
	t.Helper()
	stored := stack.ReadJournal(ctx, t, js, auth)
	seen := map[events.FactID]int{}
	for _, f := range stored {
		seen[f.ID]++
	}
	lost, twice := 0, 0
	for id := range acked {
		if seen[id] == 0 {
			lost++
		}
	}
	for _, n := range seen {
		if n > 1 {
			twice++
		}
	}
	held := "unknown"
	if info, err := streamState(ctx, js, events.StreamJournal); err == nil {
		held = fmt.Sprint(info.State.Msgs)
	}
	t.Logf("%d facts acknowledged by INGRESS, %d JOURNAL messages read (the stream holds %s): %d lost, %d stored twice", len(acked), len(stored), held, lost, twice)
	if lost > 0 || twice > 0 {
		t.Fatalf("%d acknowledged facts lost, %d stored more than once", lost, twice)
	}
	return stored
}
