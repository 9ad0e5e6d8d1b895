package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/natsbackend"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/services/receipts"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/runner"
	"github.com/factsync/factsync/shared/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

func init() { benchCommands = append(benchCommands, newBenchIngest) }

// ingestResult is what `factsync bench ingest --json` prints.
type ingestResult struct {
	Facts      int `json:"facts"`
	FieldBytes int `json:"field_bytes"`
	// FactBytes is one encoded signed fact, the payload size of the
	// baseline.
	FactBytes  int `json:"fact_bytes"`
	BatchFacts int `json:"batch_facts"`
	// FactsPerSec is end to end: from the first SDK publish until every
	// document is queryable, through guard (signature, token, policy),
	// JOURNAL (fsync before ack) and the journal's fold.
	FactsPerSec float64 `json:"facts_per_sec"`
	Seconds     float64 `json:"seconds"`
	// RawAsyncPublishPerSec is plain JetStream async publishing of
	// FactBytes-sized messages to a file stream on the same server, fsync
	// before ack, measured in the same run: the baseline.
	RawAsyncPublishPerSec float64 `json:"raw_async_publish_per_sec"`
	Ratio                 float64 `json:"ratio_to_raw"`
	// Receipts is the receipt latency of every fact, with --receipts: the
	// receipts service then runs beside guard and journal during the
	// ingest, so FactsPerSec is the rate with it.
	Receipts *receiptLatency `json:"receipts,omitempty"`
}

// ingestBench is what `factsync bench ingest` is asked to measure.
type ingestBench struct {
	Facts      int
	FieldBytes int
	Batch      int
	// Receipts runs the receipts service too and measures when each
	// fact's receipt became available.
	Receipts bool
}

func newBenchIngest(g *globals) *cobra.Command {
	var cfg ingestBench
	cmd := &cobra.Command{
		Use:   "ingest",
		Short: "End-to-end signed facts per second, SDK publish to queryable, beside raw JetStream publishing (--receipts: and each fact's receipt latency)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := benchIngest(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			printBench(g, cmd, res)
			return nil
		},
	}
	cmd.Flags().IntVar(&cfg.Facts, "facts", 20000, "facts to write, each to its own document")
	cmd.Flags().IntVar(&cfg.FieldBytes, "size", 100, "bytes of field data per fact")
	cmd.Flags().IntVar(&cfg.Batch, "batch", 100, "facts per SDK write batch")
	cmd.Flags().BoolVar(&cfg.Receipts, "receipts", false, "run the receipts service too, and report how long after JOURNAL acceptance each fact's receipt was available")
	return cmd
}

func benchIngest(ctx context.Context, cfg ingestBench) (ingestResult, error) {
	facts, size, batch := cfg.Facts, cfg.FieldBytes, cfg.Batch
	if facts <= 0 || size < 0 || batch <= 0 {
		return ingestResult{}, usageErrorf("--facts and --batch must be positive and --size not negative")
	}
	res := ingestResult{Facts: facts, FieldBytes: size, BatchFacts: batch}
	dir, cleanup, err := tempDir("factsync-bench-ingest-")
	if err != nil {
		return res, err
	}
	defer cleanup()
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: filepath.Join(dir, "nats"), Port: -1})
	if err != nil {
		return res, err
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return res, err
	}
	defer nc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	peerPub, peerKey, _ := ed25519.GenerateKey(rand.Reader)
	quiet := slog.New(slog.DiscardHandler)
	services := []service.Service{guard.New(guard.Config{}), journal.New(journal.Config{})}
	if cfg.Receipts {
		services = append(services, receipts.New(receipts.Config{}))
	}
	r, err := runner.Start(ctx, runner.Config{Conn: nc, DataRoot: filepath.Join(dir, "services"), Peer: events.PeerIDOf(peerPub), PeerKey: peerKey, Logger: quiet}, services...)
	if err != nil {
		return res, err
	}
	defer func() { cancel(); _ = r.Wait() }()
	select {
	case <-r.Ready():
	case <-ctx.Done():
		return res, ctx.Err()
	}

	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	devPub, devKey, _ := ed25519.GenerateKey(rand.Reader)
	token, err := capability.Mint(authKey, devPub, []capability.Right{{Collection: "bench", Op: capability.OpWrite}, {Collection: "bench", Op: capability.OpRead}}, time.Now().Add(time.Hour))
	if err != nil {
		return res, err
	}
	b := natsbackend.New(natsbackend.Options{Conn: nc, AcceptedOnly: true})
	if err := b.Initialize(ctx, sdk.Config{AuthorityKey: authPub, DeviceKey: devKey, Token: token}); err != nil {
		return res, err
	}
	defer func() { _ = b.Shutdown(context.WithoutCancel(ctx)) }()

	filler := make([]byte, size)
	for i := range filler {
		filler[i] = 'a' + byte(i%26)
	}
	writes := make([]sdk.Write, facts)
	for i := range writes {
		if writes[i], err = sdk.UpsertWrite("bench", "d"+strconv.Itoa(i), map[string]any{"n": i, "data": string(filler)}); err != nil {
			return res, err
		}
	}
	probe, err := sdk.NewSigner(sdk.Config{AuthorityKey: authPub, DeviceKey: devKey, Token: token})
	if err != nil {
		return res, err
	}
	one, err := probe.Sign(writes[0])
	if err != nil {
		return res, err
	}
	res.FactBytes = len(one[0].Marshal())

	if res.RawAsyncPublishPerSec, err = rawPublishRate(ctx, nc, facts, res.FactBytes); err != nil {
		return res, err
	}

	js, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	store := b.DocumentStore()
	start := time.Now()
	if err := writeConcurrently(ctx, store, writes, batch, 4); err != nil {
		return res, err
	}
	for lastDeniedCheck := time.Now(); ; {
		n, err := store.Count(ctx, "bench", sdk.Query{})
		if err != nil {
			return res, err
		}
		if n >= facts {
			break
		}
		if time.Since(lastDeniedCheck) > time.Second {
			// A denied fact never becomes queryable: fail rather than wait
			// for it forever.
			if err := checkNoneDenied(ctx, js); err != nil {
				return res, err
			}
			lastDeniedCheck = time.Now()
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(queryablePoll):
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.FactsPerSec = float64(facts) / res.Seconds
	res.Ratio = res.FactsPerSec / res.RawAsyncPublishPerSec
	if !cfg.Receipts {
		return res, nil
	}
	// Receipts are read on the whole authority, a right the writing
	// device's token does not carry.
	reader, err := capability.Mint(authKey, devPub, []capability.Right{{Collection: capability.AnyCollection, Op: capability.OpRead}}, time.Now().Add(time.Hour))
	if err != nil {
		return res, err
	}
	res.Receipts, err = measureReceiptLatency(ctx, js, newAPIClient(nc, authPub, reader), peerPub, facts)
	return res, err
}

// queryablePoll is how often the ingest bench asks whether every fact is
// queryable. A count folds every document, so asking more often takes CPU
// from the services being measured (with 5 ms, the bench's own counting
// took a sixth of the process's CPU while the pipeline drained, delaying
// receipts), for at most this much more precision in the elapsed time.
const queryablePoll = 50 * time.Millisecond

// checkNoneDenied fails when the guard denied any of the bench's facts,
// naming the reason of the first.
func checkNoneDenied(ctx context.Context, js jetstream.JetStream) error {
	denied, err := js.Stream(ctx, events.StreamDenied)
	if err != nil {
		return fmt.Errorf("open DENIED: %w", err)
	}
	info, err := denied.Info(ctx)
	if err != nil {
		return fmt.Errorf("read DENIED: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	first, err := denied.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		return fmt.Errorf("read DENIED: %w", err)
	}
	return fmt.Errorf("the guard denied %d of the bench's facts (the first on %s), so they never become queryable", info.State.Msgs, first.Subject)
}

// writeConcurrently applies writes in batches from several goroutines, as
// concurrent app writers would.
func writeConcurrently(ctx context.Context, store sdk.DocumentStore, writes []sdk.Write, batch, workers int) error {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	next := make(chan []sdk.Write)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ws := range next {
				if _, err := store.Apply(ctx, ws...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 0; i < len(writes); i += batch {
		select {
		case next <- writes[i:min(i+batch, len(writes))]:
		case err := <-errs:
			close(next)
			wg.Wait()
			return err
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// rawPublishRate publishes n messages of size bytes with JetStream async
// publishing to a throwaway file stream and returns messages per second.
func rawPublishRate(ctx context.Context, nc *nats.Conn, n, size int) (float64, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return 0, err
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH_RAW", Subjects: []string{"bench.raw"}, Storage: jetstream.FileStorage}); err != nil {
		return 0, fmt.Errorf("baseline stream: %w", err)
	}
	defer func() { _ = js.DeleteStream(context.WithoutCancel(ctx), "BENCH_RAW") }()
	payload := make([]byte, size)
	start := time.Now()
	for range n {
		if _, err := js.PublishAsync("bench.raw", payload, jetstream.WithStallWait(30*time.Second)); err != nil {
			return 0, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
