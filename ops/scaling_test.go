package ops_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"github.com/factsync/factsync/shared/natsauth"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/natsbackend"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/capability"
	"github.com/nats-io/nats.go"
)

// device is one authority with a device that may read and write it.
type device struct {
	auth    events.AuthorityID
	backend *natsbackend.Backend
}

func newDevice(t *testing.T, url string, u users) device {
	t.Helper()
	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	devPub, devKey, _ := ed25519.GenerateKey(rand.Reader)
	token, err := capability.Mint(authKey, devPub, []capability.Right{
		{Collection: capability.AnyCollection, Op: capability.OpRead},
		{Collection: capability.AnyCollection, Op: capability.OpWrite},
	}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, nats.UserInfo(u.Client.Name, u.Client.Password), nats.CustomInboxPrefix(natsauth.InboxPrefix(u.Client.Name)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b := natsbackend.New(natsbackend.Options{Conn: nc, AcceptedOnly: true, RequestTimeout: time.Second})
	if err := b.Initialize(t.Context(), sdk.Config{AuthorityKey: authPub, DeviceKey: devKey, Token: token}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	return device{auth: events.AuthorityIDOf(authPub), backend: b}
}

// write stores n new documents in each device's "tasks", one INGRESS
// message per document, all devices at once.
func write(t *testing.T, devices []device, round, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(devices))
	for _, d := range devices {
		wg.Go(func() {
			for i := range n {
				if _, err := d.backend.DocumentStore().Upsert(t.Context(), "tasks", fmt.Sprintf("r%d-%d", round, i), map[string]any{"round": round}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// allAnswered reports whether every authority's count, asked through a
// guard, is want.
func allAnswered(t *testing.T, devices []device, want int) func() bool {
	return func() bool {
		for _, d := range devices {
			n, err := d.backend.DocumentStore().Count(t.Context(), "tasks", sdk.Query{})
			if err != nil || n != want {
				return false
			}
		}
		return true
	}
}

// The scaling model of docs/operations.md, as separate processes against
// one NATS server: two guards share the INGRESS consumer, two journals
// split the partitions and each answers for its own authorities; a journal
// killed with SIGKILL loses nothing, and the survivor takes its partitions
// over and answers for every authority with every fact.
func TestTwoGuardsAndTwoJournalsAsProcesses(t *testing.T) {
	const partitions = 8
	root := t.TempDir()
	natsDir := filepath.Join(root, "nats")
	natsPort := freePort(t)
	server := start(t, "nats", nil, "serve", "--nats-only", "--data", natsDir, "--nats-port", strconv.Itoa(natsPort))
	server.waitReady(t, 20*time.Second)
	url := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	usersFile := filepath.Join(natsDir, "nats-users.json")
	env := []string{"FACTSYNC_JOURNAL_LEASE=2s", "FACTSYNC_JOURNAL_PARTITIONS=" + strconv.Itoa(partitions)}
	serve := func(name, service string) *process {
		return start(t, name, env, "serve", service, "--nats", url, "--nats-users", usersFile, "--data", filepath.Join(root, name))
	}
	guards := []*process{serve("guard-1", "guard"), serve("guard-2", "guard")}
	for _, g := range guards {
		g.waitReady(t, 20*time.Second)
	}
	journals := []*process{serve("journal-1", "journal"), serve("journal-2", "journal")}
	for _, j := range journals {
		j.waitReady(t, 20*time.Second)
	}

	// Authorities in even and odd partitions: with two replicas, each
	// replica owns the partitions of one parity.
	u := readUsers(t, usersFile)
	var devices []device
	parity := map[int]int{}
	for len(devices) < 8 || parity[0] < 2 || parity[1] < 2 {
		d := newDevice(t, url, u)
		parity[journal.PartitionOf(d.auth, partitions)%2]++
		devices = append(devices, d)
	}

	const perRound = 6
	write(t, devices, 1, perRound)
	eventually(t, 20*time.Second, "every authority answered with its facts", allAnswered(t, devices, perRound))
	for _, g := range guards {
		if n := g.metric(t, "factsync_nats_consumer_pending"); n < 0 {
			t.Errorf("%s reports no INGRESS backlog", g.name)
		}
		if n := g.metric(t, "factsync_guard_accepted_total"); n <= 0 {
			t.Errorf("%s accepted no fact: the guards do not share INGRESS", g.name)
		} else {
			t.Logf("%s accepted %v facts", g.name, n)
		}
	}
	// A replica that starts first claims every partition; the second takes
	// its half over as leases are renewed. Wait for that handover.
	eventually(t, 30*time.Second, "the two journals to own half the partitions each", func() bool {
		for _, j := range journals {
			if j.metric(t, "factsync_journal_partitions_owned") != partitions/2 {
				return false
			}
		}
		return true
	})
	for _, j := range journals {
		owned, folded := j.metric(t, "factsync_journal_partitions_owned"), j.metric(t, "factsync_journal_facts_folded_total")
		t.Logf("%s owns %v partitions, folded %v facts", j.name, owned, folded)
		if j.metric(t, "factsync_journal_fold_lag_seconds") < 0 || j.metric(t, "factsync_nats_consumer_pending") < 0 {
			t.Errorf("%s reports no fold lag or JOURNAL backlog", j.name)
		}
		if owned != partitions/2 || folded <= 0 {
			t.Errorf("%s owns %v partitions and folded %v facts: the journals do not share the work", j.name, owned, folded)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// SIGKILL one journal: its leases lapse after 2s and the survivor
	// folds its partitions from JOURNAL. Facts written meanwhile are kept.
	killed := time.Now()
	journals[0].kill()
	write(t, devices, 2, perRound)
	eventually(t, 30*time.Second, "the survivor answering every authority with every fact", allAnswered(t, devices, 2*perRound))
	t.Logf("survivor answered for every authority %s after the kill", time.Since(killed).Round(10*time.Millisecond))
	if owned := journals[1].metric(t, "factsync_journal_partitions_owned"); owned != partitions {
		t.Fatalf("survivor owns %v partitions, want all %d", owned, partitions)
	}
}
