// Package crash kills real factsync processes with SIGKILL while facts
// are ingested, and checks that nothing acknowledged is lost or stored
// twice, that the documents equal those of a clean run, and that the
// receipts log holds each fact of JOURNAL once, in order, under
// consistent checkpoints.
package crash

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/faults/internal/stack"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/fold"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// ackedLeftovers is what the guard logs when it removes INGRESS messages
// it had acked but the stream still held after a crash.
const ackedLeftovers = "removed INGRESS messages the guard had acknowledged"

// leftoverCount finds the number in the guard's log line (slog text).
var leftoverCount = regexp.MustCompile(`messages=(\d+)`)

func long() bool { return os.Getenv("FACTSYNC_LONG") == "1" }

// buildFactsync builds the binary once per test.
func buildFactsync(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "factsync")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/factsync/factsync/cmd/factsync").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// server is a `factsync serve guard journal receipts` process.
type server struct {
	bin, data string
	port      int
	log       bytes.Buffer

	mu     sync.Mutex // held while the process is started, killed or stalled
	cmd    *exec.Cmd
	stalls int
}

func (s *server) start(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmd = exec.Command(s.bin, "serve", "guard", "journal", "receipts", "--data", s.data,
		"--nats-port", fmt.Sprint(s.port), "--http", "127.0.0.1:0", "--log-level", "warn")
	s.cmd.Stdout, s.cmd.Stderr = &s.log, &s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
}

// kill sends SIGKILL and reaps the process.
func (s *server) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
}

// stallLength is how long each stall freezes the process: longer than the
// guard's first token deadline (100 ms), as a machine at a load average of
// 19 on two cores can leave a process unscheduled.
const stallLength = 150 * time.Millisecond

// stallUntil freezes the process (SIGSTOP, then SIGCONT after
// stallLength) at random intervals until done is closed. A frozen process
// does no work while wall-clock deadlines inside it run out, which is
// what an overloaded machine does to it. The sleeps here are the fault,
// not synchronisation.
func (s *server) stallUntil(done <-chan struct{}, rng *mrand.Rand) {
	for {
		select {
		case <-done:
			return
		case <-time.After(stallLength + time.Duration(rng.Int64N(int64(4*stallLength)))):
		}
		s.mu.Lock()
		if s.cmd.Process.Signal(syscall.SIGSTOP) == nil {
			time.Sleep(stallLength)
			_ = s.cmd.Process.Signal(syscall.SIGCONT)
			s.stalls++
		}
		s.mu.Unlock()
	}
}

// connect waits for the server and connects as role's user from the
// users file the process wrote.
func (s *server) connect(t *testing.T, role natsauth.Role) *nats.Conn {
	t.Helper()
	var nc *nats.Conn
	bustest.Eventually(t, 60*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(s.data, "nats-users.json"))
		if err != nil {
			return false
		}
		var users map[string]natsauth.User
		if json.Unmarshal(b, &users) != nil {
			return false
		}
		u := users[string(role)]
		opts := []nats.Option{nats.UserInfo(u.Name, u.Password), nats.MaxReconnects(0)}
		if role == natsauth.RoleClient { // serve gives its client user a private inbox
			opts = append(opts, nats.CustomInboxPrefix(natsauth.InboxPrefix(u.Name)))
		}
		nc, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", s.port), opts...)
		return err == nil
	}, "factsync serve accepting %s connections; log:\n%s", role, &s.log)
	return nc
}

// The guard, journal and receipts process is killed with SIGKILL at
// random points while a client ingests facts, the guard writes them to
// JOURNAL and the receipts service appends them to its log, and restarted
// each time; until INGRESS is drained it is also frozen (SIGSTOP) for
// stallLength at random, as an overloaded machine does. Once INGRESS is drained, every fact whose INGRESS publish was
// acknowledged is in JOURNAL exactly once, the journal's documents equal
// the fold of those facts, and the receipts log is JOURNAL's facts in
// order (checkReceiptsLog).
func TestCrashKillNineDuringIngest(t *testing.T) {
	facts, kills := 3000, 3
	if long() {
		facts, kills = 100_000, 10
	}
	const perBatch = 20
	seed := mrand.Uint64()
	rng := mrand.New(mrand.NewPCG(seed, 2))
	t.Logf("seed %d: %d facts, %d kills", seed, facts, kills)

	began := time.Now()
	s := &server{bin: buildFactsync(t), data: t.TempDir(), port: bustest.FreePort(t)}
	t.Logf("built factsync in %s", time.Since(began).Round(time.Millisecond))
	s.start(t)
	t.Cleanup(s.kill)
	// The process is also frozen now and then until INGRESS is drained.
	stallsDone := make(chan struct{})
	var stalling sync.WaitGroup
	stalling.Go(func() { s.stallUntil(stallsDone, mrand.New(mrand.NewPCG(seed, 3))) })
	stopStalls := sync.OnceFunc(func() { close(stallsDone); stalling.Wait() })
	t.Cleanup(stopStalls)
	d := stack.NewDevice(t)
	auth := d.Authority()

	var batches [][]*events.Fact
	for i := 0; i < facts; i += perBatch {
		var b []*events.Fact
		for j := i; j < min(i+perBatch, facts); j++ {
			doc := fmt.Sprintf("d%d", rng.IntN(200))
			b = append(b, d.Put(t, "crash", doc, map[string]any{"v": j, fmt.Sprintf("f%d", rng.IntN(5)): j}))
		}
		batches = append(batches, b)
	}
	// Kill after a random number of acknowledged batches, spread over the
	// run.
	killAt := make([]int, kills)
	for i := range killAt {
		killAt[i] = 1 + rng.IntN(len(batches)-1)
	}
	slices.Sort(killAt)

	acked := map[events.FactID]bool{}
	killed, retries := 0, 0
	client := s.connect(t, natsauth.RoleClient)
	for i := 0; i < len(batches); {
		if killed < kills && i >= killAt[killed] {
			client.Close()
			s.kill()
			killed++
			s.start(t)
			client = s.connect(t, natsauth.RoleClient)
		}
		js, _ := jetstream.New(client)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		// Each batch carries a Nats-Msg-Id, as the SDK's do, so a retry
		// of a batch whose ack was lost is not stored twice in INGRESS.
		_, err := js.Publish(ctx, events.IngressFactSubject(auth), stack.Batch([][]byte{d.Token}, batches[i]...),
			jetstream.WithMsgID(fmt.Sprintf("batch-%d-%d", seed, i)), jetstream.WithRetryAttempts(0))
		cancel()
		if err != nil {
			if retries++; retries > 20 {
				t.Fatalf("batch %d not acknowledged after %d tries: %v; server log:\n%s", i, retries, err, &s.log)
			}
			t.Logf("batch %d not acknowledged (%v); retrying", i, err)
			if client.IsClosed() || !client.IsConnected() {
				client.Close()
				client = s.connect(t, natsauth.RoleClient)
			}
			continue
		}
		for _, f := range batches[i] {
			acked[f.ID] = true
		}
		i++
		retries = 0
	}
	client.Close()
	t.Logf("ingested in %s", time.Since(began).Round(time.Millisecond))

	// Restart once more after the last write, then read JOURNAL back.
	s.kill()
	s.start(t)
	ops := s.connect(t, natsauth.RoleServices)
	defer ops.Close()
	js, _ := jetstream.New(ops)
	// The long run's backlog takes minutes on a loaded two-core machine.
	wait := 2 * time.Minute
	if long() {
		wait = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait+5*time.Minute)
	defer cancel()
	// Once a second, how many of the messages the guard holds INGRESS
	// has redelivered (AckWait ran out while the guard worked): many
	// would mean the guard repeats its own work under load.
	guardConn := s.connect(t, natsauth.RoleGuard)
	defer guardConn.Close()
	guardJS, _ := jetstream.New(guardConn)
	var mostRedelivered, mostAckPending int
	var lastLook time.Time
	bustest.Eventually(t, wait, func() bool {
		if time.Since(lastLook) >= time.Second {
			lastLook = time.Now()
			if c, err := guardJS.Consumer(ctx, events.StreamIngress, "guard"); err == nil {
				if ci, err := c.Info(ctx); err == nil {
					mostRedelivered, mostAckPending = max(mostRedelivered, ci.NumRedelivered), max(mostAckPending, ci.NumAckPending)
				}
			}
		}
		st, err := js.Stream(ctx, events.StreamIngress)
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	}, "INGRESS drained by the guard (%v); server log:\n%s", lazy(func() string { return ingressState(ctx, t, s) }), &s.log)
	t.Logf("while INGRESS drained, the guard's consumer had at most %d messages awaiting an ack and %d of them redelivered (read once a second)", mostAckPending, mostRedelivered)

	stopStalls()
	t.Logf("INGRESS drained after %s; the process was frozen %d times for %s", time.Since(began).Round(time.Millisecond), s.stalls, stallLength)
	stored := stack.ReadJournal(ctx, t, js, auth)
	t.Run("journal", func(t *testing.T) {
		seen := map[events.FactID]int{}
		clean := fold.New()
		for _, f := range stored {
			seen[f.ID]++
			if seen[f.ID] == 1 {
				clean.Apply(f)
			}
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
		t.Logf("%d facts acknowledged by INGRESS, %d JOURNAL messages, %d kills: %d lost, %d stored twice", len(acked), len(stored), killed, lost, twice)
		if lost > 0 || twice > 0 {
			reportDenials(ctx, t, js, acked, seen)
			t.Fatalf("seed %d: %d acknowledged facts lost, %d stored more than once", seed, lost, twice)
		}

		// The journal's documents, folded across the crashes, equal a clean
		// fold of what JOURNAL holds.
		clientConn := s.connect(t, natsauth.RoleClient)
		defer clientConn.Close()
		want := map[string]events.Document{}
		for doc := range clean.Documents("crash") {
			want[doc.ID] = doc
		}
		bustest.Eventually(t, 2*time.Minute, func() bool {
			got, err := stack.QueryDocuments(ctx, clientConn, d, "crash")
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
	})
	t.Run("receipts", func(t *testing.T) { checkReceiptsLog(ctx, t, s, ops, auth, stored, seed) })

	s.kill() // the server log is complete once the process is reaped
	t.Logf("%d of the %d restarts found an append to the receipts log that the kill had interrupted, and dropped it",
		bytes.Count(s.log.Bytes(), []byte(interruptedAppend)), killed+1)
	times, leftovers := 0, 0
	for _, line := range bytes.Split(s.log.Bytes(), []byte("\n")) {
		if bytes.Contains(line, []byte(ackedLeftovers)) {
			times++
			if m := leftoverCount.FindSubmatch(line); m != nil {
				n, _ := strconv.Atoi(string(m[1]))
				leftovers += n
			}
		}
	}
	t.Logf("the guard removed %d acknowledged messages a crash had left in INGRESS, %d times", leftovers, times)
}

// reportDenials logs what DENIED says about the acknowledged facts missing
// from JOURNAL: a lost fact the guard denied points at the check that
// denied it, one DENIED does not know points at the write path.
func reportDenials(ctx context.Context, t *testing.T, js jetstream.JetStream, acked map[events.FactID]bool, inJournal map[events.FactID]int) {
	t.Helper()
	reasons := map[string]int{}
	for _, m := range stack.ReadStream(ctx, t, js, events.StreamDenied, events.DeniedPrefix+".>") {
		var d eventsv1.Denial
		if proto.Unmarshal(m.Data(), &d) != nil {
			continue
		}
		id, err := events.ParseFactID(d.GetFactId())
		if err == nil && acked[id] && inJournal[id] == 0 {
			reasons[d.GetReason()+": "+d.GetDetail()]++
		}
	}
	t.Logf("DENIED on the lost facts: %v (empty: DENIED has none of them)", reasons)
}

// ingressState describes what INGRESS and the guard's consumer hold, read
// as the guard's user: only it may look at INGRESS's consumer.
func ingressState(ctx context.Context, t *testing.T, s *server) string {
	nc := s.connect(t, natsauth.RoleGuard)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, events.StreamIngress)
	if err != nil {
		return err.Error()
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err.Error()
	}
	out := fmt.Sprintf("INGRESS holds %d messages, seq %d..%d", info.State.Msgs, info.State.FirstSeq, info.State.LastSeq)
	c, err := st.Consumer(ctx, "guard")
	if err != nil {
		return out + "; consumer guard: " + err.Error()
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return out + "; consumer guard: " + err.Error()
	}
	return out + fmt.Sprintf("; consumer guard: pending %d, ack pending %d, redelivered %d, waiting %d, ack floor %d",
		ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.AckFloor.Stream)
}
