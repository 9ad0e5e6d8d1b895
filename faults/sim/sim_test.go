package sim_test

import (
	"errors"
	"flag"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/faults/sim"
	"github.com/factsync/factsync/shared/fold"
)

var (
	seedFlag  = flag.Int64("seed", -1, "replay only this seed")
	seedsFlag = flag.Int("seeds", 0, "how many seeds TestSim runs (default 1000, -long 5000)")
	fromFlag  = flag.Uint64("seed-from", 1, "first seed TestSim runs")
	longFlag  = flag.Bool("long", false, "long run: more seeds, more peers and facts (also FACTSYNC_LONG=1)")
	foldFlag  = flag.String("fold", "real", "fold the peers run: real, or flipped (the injected tie-break bug)")
)

func long() bool { return *longFlag || os.Getenv("FACTSYNC_LONG") == "1" }

// config is the size of a run under the flags.
func config(t testing.TB, seed uint64) sim.Config {
	cfg := sim.DefaultConfig(seed)
	if long() {
		cfg = sim.LongConfig(seed)
		cfg.ReplayFlags = "-long"
	}
	switch *foldFlag {
	case "real":
	case "flipped":
		cfg.NewFold = flippedFold
		cfg.ReplayFlags += " -fold flipped"
	default:
		t.Fatalf("-fold %q: want real or flipped", *foldFlag)
	}
	return cfg
}

// seeds lists the seeds to run: the one of -seed, else -seeds from
// -seed-from.
func seeds() []uint64 {
	if *seedFlag >= 0 {
		return []uint64{uint64(*seedFlag)}
	}
	n := *seedsFlag
	if n <= 0 {
		n = 1000
		if long() {
			n = 5000
		}
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = *fromFlag + uint64(i)
	}
	return out
}

// runSeeds runs every seed on all cores and returns the failures in seed
// order and the summed statistics.
func runSeeds(t testing.TB, list []uint64, cfgOf func(uint64) sim.Config) ([]*sim.Failure, sim.Stats) {
	t.Helper()
	var (
		mu       sync.Mutex
		failures []*sim.Failure
		total    sim.Stats
		next     = make(chan uint64)
		wg       sync.WaitGroup
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for seed := range next {
				res, err := sim.Run(cfgOf(seed))
				mu.Lock()
				if f := (*sim.Failure)(nil); errors.As(err, &f) {
					failures = append(failures, f)
				} else if err != nil {
					t.Errorf("seed %d: %v", seed, err)
				}
				total = add(total, res.Stats)
				mu.Unlock()
			}
		})
	}
	for _, s := range list {
		next <- s
	}
	close(next)
	wg.Wait()
	slices.SortFunc(failures, func(a, b *sim.Failure) int { return cmpUint(a.Seed, b.Seed) })
	return failures, total
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func add(a, b sim.Stats) sim.Stats {
	a.Ticks += b.Ticks
	a.Facts += b.Facts
	a.ConcurrentWrites += b.ConcurrentWrites
	a.Sessions += b.Sessions
	a.NegentropySessions += b.NegentropySessions
	a.RibltSessions += b.RibltSessions
	a.Completed += b.Completed
	a.Aborted += b.Aborted
	a.Expired += b.Expired
	a.Sent += b.Sent
	a.Dropped += b.Dropped
	a.Duplicated += b.Duplicated
	a.Partitioned += b.Partitioned
	a.Stale += b.Stale
	a.Partitions += b.Partitions
	a.FactsMoved += b.FactsMoved
	a.DuplicateFacts += b.DuplicateFacts
	a.MaxInFlight = max(a.MaxInFlight, b.MaxInFlight)
	return a
}

// TestSim runs the convergence simulator over many seeds (1000 in CI):
// every peer must end with every fact written and the same documents.
// A failure names its seed; -seed S replays just that one.
func TestSim(t *testing.T) {
	list := seeds()
	start := time.Now()
	failures, total := runSeeds(t, list, func(s uint64) sim.Config { return config(t, s) })
	for i, f := range failures {
		if i == 10 {
			t.Errorf("... and %d more failing seeds", len(failures)-10)
			break
		}
		t.Error(f)
	}
	t.Logf("%d seeds (fold %s, long %v) in %s: %d failed", len(list), *foldFlag, long(), time.Since(start).Round(time.Millisecond), len(failures))
	t.Logf("%d facts (%d in concurrent bursts), %d sessions (%d negentropy, %d riblt; %d completed, %d aborted, %d expired)",
		total.Facts, total.ConcurrentWrites, total.Sessions, total.NegentropySessions, total.RibltSessions, total.Completed, total.Aborted, total.Expired)
	t.Logf("%d messages sent: %d dropped, %d duplicated, %d cut by %d partitions, %d stale replies ignored; %d facts moved, %d duplicate facts; at most %d in flight",
		total.Sent, total.Dropped, total.Duplicated, total.Partitioned, total.Partitions, total.Stale, total.FactsMoved, total.DuplicateFacts, total.MaxInFlight)
	// The run must have exercised what it claims to survive.
	if len(failures) == 0 && len(list) >= 100 {
		for name, n := range map[string]int{
			"dropped": total.Dropped, "duplicated": total.Duplicated, "partitioned": total.Partitioned,
			"negentropy sessions": total.NegentropySessions, "riblt sessions": total.RibltSessions,
			"concurrent writes": total.ConcurrentWrites, "expired sessions": total.Expired, "stale replies": total.Stale,
		} {
			if n == 0 {
				t.Errorf("no %s in %d seeds: the simulator does not exercise it", name, len(list))
			}
		}
	}
}

// The same seed gives the same run, message for message.
func TestSimIsDeterministic(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		a, errA := sim.Run(sim.DefaultConfig(seed))
		b, errB := sim.Run(sim.DefaultConfig(seed))
		if errA != nil || errB != nil {
			t.Fatalf("seed %d: %v / %v", seed, errA, errB)
		}
		if a != b {
			t.Fatalf("seed %d ran twice differently:\n%+v\n%+v", seed, a, b)
		}
		if a.Facts == 0 || a.FactsMoved == 0 {
			t.Fatalf("seed %d wrote %d facts and moved %d: nothing was reconciled", seed, a.Facts, a.FactsMoved)
		}
	}
}

// The must-show: break the fold's tie-break (equal HLCs resolved by
// arrival instead of FactID) and the simulator finds a seed that fails,
// the seed fails again when replayed, and the same seed passes with the
// real fold.
func TestSimFindsFlippedTieBreak(t *testing.T) {
	flipped := func(seed uint64) sim.Config {
		cfg := sim.DefaultConfig(seed)
		cfg.NewFold = flippedFold
		cfg.ReplayFlags = "-fold flipped"
		return cfg
	}
	var found *sim.Failure
	var tried int
	for seed := uint64(1); seed <= 1000 && found == nil; seed++ {
		tried++
		if _, err := sim.Run(flipped(seed)); err != nil && !errors.As(err, &found) {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
	if found == nil {
		t.Fatalf("the simulator did not notice a tie-break that depends on arrival order in %d seeds", tried)
	}
	t.Logf("found after %d seeds: %v", tried, found)
	_, again := sim.Run(flipped(found.Seed))
	if again == nil || again.Error() != found.Error() {
		t.Fatalf("replaying seed %d: %v, want the same failure %v", found.Seed, again, found)
	}
	if _, err := sim.Run(sim.DefaultConfig(found.Seed)); err != nil {
		t.Fatalf("seed %d fails with the real fold too: %v", found.Seed, err)
	}
}

// The copy of the fold that the tie-break test breaks folds exactly like
// shared/fold when left unbroken, in every order the simulator delivers.
func TestFoldCopyMatchesRealFold(t *testing.T) {
	var mismatch []string
	for seed := uint64(1); seed <= 20; seed++ {
		cfg := sim.DefaultConfig(seed)
		cfg.NewFold = func() sim.Folder {
			return pairFold{real: fold.New(), copy: newCopyFold(eventsCompare), mismatch: &mismatch}
		}
		if _, err := sim.Run(cfg); err != nil {
			t.Fatal(err)
		}
		if len(mismatch) > 0 {
			t.Fatalf("seed %d: the fold copy differs from shared/fold %s", seed, mismatch[0])
		}
	}
}
