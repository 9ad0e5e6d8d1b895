package journal_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/clock"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// PartitionOf must agree with nats-server's {{partition(n,1)}} mapping of
// the authority token, as the docs promise operators.
func TestPartitionOfMatchesNATSSubjectMapping(t *testing.T) {
	const n = 7
	tr, err := server.NewSubjectTransform(events.JournalPrefix+".*.*", "p.{{partition(7,1)}}")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		a := authorityN(i)
		want := fmt.Sprintf("p.%d", journal.PartitionOf(a.id, n))
		if got, err := tr.Match(events.JournalSubject(a.id, "tasks")); err != nil || got != want {
			t.Fatalf("authority %s: nats maps to %q (%v), PartitionOf to %q", a.id, got, err, want)
		}
	}
}

type authority struct {
	key ed25519.PrivateKey
	id  events.AuthorityID
}

func authorityN(i int) authority {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{byte(100 + i)}, 32))
	return authority{key: key, id: events.AuthorityIDOf(key.Public().(ed25519.PublicKey))}
}

func signAs(tb testing.TB, a authority, wall uint64, coll, id string, fields map[string]any) *events.Fact {
	tb.Helper()
	raw, _ := json.Marshal(fields)
	f, err := events.SignFact(alice, &eventsv1.FactBody{
		AuthorityKey: a.key.Public().(ed25519.PublicKey),
		Hlc:          &eventsv1.HLC{WallMillis: wall},
		Collection:   coll,
		Document:     id,
		TokenHash:    tokenHash[:],
		Op:           &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: raw}},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// countOf asks whichever replica serves a's partition how many tasks a has;
// -1 when no replica answers in time.
func countOf(tb testing.TB, nc *nats.Conn, a authority) int {
	tb.Helper()
	body, _ := json.Marshal(events.CountRequest{Selection: events.Selection{Collection: "tasks"}})
	m, err := nc.Request(events.ServiceSubject(events.JournalProto, events.OpCount, a.id), body, 500*time.Millisecond)
	if err != nil {
		return -1
	}
	var c events.CountReply
	if e := events.DecodeError(m.Data); e != nil || json.Unmarshal(m.Data, &c) != nil {
		tb.Fatalf("count of %s: %s", a.id, m.Data)
	}
	return c.Count
}

// replicaMetrics reads a replica's partitions owned and facts folded.
func replicaMetrics(tb testing.TB, reader *sdkmetric.ManualReader) (owned, folded int64) {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		tb.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Gauge[int64]:
				if m.Name == "factsync.journal.partitions.owned" {
					for _, dp := range data.DataPoints {
						owned += dp.Value
					}
				}
			case metricdata.Sum[int64]:
				if m.Name == "factsync.journal.facts.folded" {
					for _, dp := range data.DataPoints {
						folded += dp.Value
					}
				}
			}
		}
	}
	return owned, folded
}

// Two replicas split the partitions, a replica that joins takes over its
// share without anything being lost or folded twice, and a replica that
// leaves hands its partitions back, while every authority stays answered.
func TestReplicasSharePartitionsAndHandOver(t *testing.T) {
	h := startServer(t, bus.EmbeddedConfig{})
	const partitions = 4
	cfg := journal.Config{Partitions: partitions, LeaseTTL: time.Second}
	// Authorities in every partition, so both replicas have work.
	var auths []authority
	covered := map[int]bool{}
	for i := 0; len(covered) < partitions || len(auths) < 8; i++ {
		a := authorityN(i)
		covered[journal.PartitionOf(a.id, partitions)] = true
		auths = append(auths, a)
	}
	facts := func(round int) {
		for _, a := range auths {
			var fs []*events.Fact
			for d := range 3 {
				fs = append(fs, signAs(t, a, uint64(1000+round), "tasks", fmt.Sprintf("r%d-d%d", round, d), map[string]any{"round": round}))
			}
			publish(t, h.JS, fs...)
		}
	}
	allCount := func(want int) func() bool {
		return func() bool {
			for _, a := range auths {
				if countOf(t, h.Conn, a) != want {
					return false
				}
			}
			return true
		}
	}
	replica := func() (*running, *sdkmetric.ManualReader) {
		reader := sdkmetric.NewManualReader()
		env := &service.Env{Conn: h.Conn, JS: h.JS, Clock: clock.Real{}, DataDir: t.TempDir(),
			Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter(journal.Name)}
		return runJournalEnv(t, h, env, cfg), reader
	}

	facts(0)
	a, aMetrics := replica()
	eventually(t, "replica a answers for every authority", allCount(3))
	if owned, _ := replicaMetrics(t, aMetrics); owned != partitions {
		t.Fatalf("alone, replica a owns %d partitions, want %d", owned, partitions)
	}

	b, bMetrics := replica()
	eventually(t, "the partitions split between a and b", func() bool {
		ao, _ := replicaMetrics(t, aMetrics)
		bo, _ := replicaMetrics(t, bMetrics)
		return ao == partitions/2 && bo == partitions/2
	})
	facts(1)
	eventually(t, "every authority answered with both rounds", allCount(6))
	_, aFolded := replicaMetrics(t, aMetrics)
	_, bFolded := replicaMetrics(t, bMetrics)
	if bFolded == 0 || aFolded <= int64(3*len(auths)) {
		t.Fatalf("work not shared: a folded %d, b folded %d", aFolded, bFolded)
	}

	// a leaves; b takes everything back, from its own checkpoints or the
	// stream, and misses nothing published meanwhile.
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	facts(2)
	eventually(t, "b alone answers every authority with all three rounds", allCount(9))
	if owned, _ := replicaMetrics(t, bMetrics); owned != partitions {
		t.Fatalf("after a left, b owns %d partitions, want %d", owned, partitions)
	}
	if err := b.stop(); err != nil {
		t.Fatal(err)
	}
}
