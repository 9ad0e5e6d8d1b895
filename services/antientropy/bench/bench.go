// Package bench measures set reconciliation between two peers that share n
// facts and differ in d more, for `factsync bench reconcile`. It runs both
// protocols of the antientropy service, negentropy and riblt, in memory
// over the same indexes the service keeps, and reports what crossed the
// wire, how many round trips it took and the CPU it cost, against the
// d*32-byte lower bound and a naive exchange of every id.
package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"slices"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/antientropy/riblt"
	"github.com/factsync/factsync/shared/cpuclock"
)

// Options says what to measure.
type Options struct {
	// N is how many facts both peers hold.
	N int
	// Ds are the differences to measure: d facts held by one peer only,
	// the first half (rounded up) by the initiator, the rest by the
	// responder.
	Ds []int
	// Seed makes the ids and timestamps reproducible.
	Seed uint64
	// FrameSizeLimit bounds negentropy messages; 0 means
	// negentropy.DefaultFrameSizeLimit.
	FrameSizeLimit int
	// SketchSize is how many riblt symbols each peer keeps; 0 means
	// riblt.DefaultSketchSize.
	SketchSize int
}

// Report is the result of Reconcile, ready to print as JSON.
type Report struct {
	N              int      `json:"n"`
	FrameSizeLimit int      `json:"frame_size_limit"`
	SketchSize     int      `json:"riblt_sketch_size"`
	Results        []Result `json:"results"`
}

// Result is one difference size.
type Result struct {
	D int `json:"d"`
	// LowerBound is d*32 bytes: the differing ids themselves.
	LowerBound int `json:"lower_bound_bytes"`
	// NaiveBytes is what exchanging every id costs: one side sends all of
	// its ids and the other answers with the ids the first lacks.
	NaiveBytes int      `json:"naive_bytes"`
	Negentropy Protocol `json:"negentropy"`
	RIBLT      Protocol `json:"riblt"`
}

// Protocol is what one protocol cost to learn the whole difference.
type Protocol struct {
	// BytesOut flowed from the side that starts (negentropy initiator,
	// riblt receiver) to the other; BytesIn the other way.
	BytesOut   int     `json:"bytes_out"`
	BytesIn    int     `json:"bytes_in"`
	BytesTotal int     `json:"bytes_total"`
	RoundTrips int     `json:"round_trips"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// VsLowerBound is BytesTotal / LowerBound.
	VsLowerBound float64 `json:"vs_lower_bound"`
	// Correct reports that the ids learnt are exactly the difference.
	Correct bool `json:"correct"`
	// Error is set when the protocol could not reconcile, e.g. a
	// difference larger than the riblt sketch.
	Error string `json:"error,omitempty"`
}

// peer is one side's state: the index and sketch the service keeps.
type peer struct {
	index  *negentropy.Index
	sketch *riblt.Sketch
}

func (p *peer) add(it negentropy.Item) {
	if p.index.Insert(it) {
		p.sketch.Add(it.ID)
	}
}

func (p *peer) clone() *peer { return &peer{index: p.index.Clone(), sketch: p.sketch.Clone()} }

// Reconcile builds two peers sharing opts.N facts once, then for each d
// adds the differing facts to copies of them and reconciles with both
// protocols. Building the indexes is not counted: the service keeps them
// up to date as facts arrive.
func Reconcile(ctx context.Context, opts Options) (*Report, error) {
	if opts.N < 0 || slices.ContainsFunc(opts.Ds, func(d int) bool { return d < 0 }) {
		return nil, events.Errorf(events.ReasonMalformed, "bench sizes must not be negative (n=%d, d=%v)", opts.N, opts.Ds)
	}
	if opts.FrameSizeLimit == 0 {
		opts.FrameSizeLimit = negentropy.DefaultFrameSizeLimit
	}
	if opts.SketchSize == 0 {
		opts.SketchSize = riblt.DefaultSketchSize
	}
	rng := rand.New(rand.NewPCG(opts.Seed, 0x5eed))
	// Facts of a 30-day window, several per second, as HLC seconds.
	const start, window = 1_700_000_000, 30 * 24 * 3600
	item := func() negentropy.Item {
		var it negentropy.Item
		for i := 0; i < len(it.ID); i += 8 {
			binary.LittleEndian.PutUint64(it.ID[i:], rng.Uint64())
		}
		it.Timestamp = start + rng.Uint64N(window)
		return it
	}
	base := &peer{index: &negentropy.Index{}, sketch: riblt.NewSketch(opts.SketchSize)}
	for range opts.N {
		base.add(item())
	}
	report := &Report{N: opts.N, FrameSizeLimit: opts.FrameSizeLimit, SketchSize: opts.SketchSize}
	for _, d := range opts.Ds {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		a, b := base.clone(), base.clone()
		var onlyA, onlyB []events.FactID
		for i := range d {
			it := item()
			if i < (d+1)/2 {
				a.add(it)
				onlyA = append(onlyA, it.ID)
			} else {
				b.add(it)
				onlyB = append(onlyB, it.ID)
			}
		}
		r := Result{D: d, LowerBound: d * 32, NaiveBytes: (a.index.Len() + len(onlyB)) * 32}
		r.Negentropy = runNegentropy(a.index, b.index, opts.FrameSizeLimit, onlyA, onlyB)
		r.RIBLT = runRIBLT(a.sketch, b.sketch, onlyA, onlyB)
		for _, p := range []*Protocol{&r.Negentropy, &r.RIBLT} {
			p.BytesTotal = p.BytesOut + p.BytesIn
			if r.LowerBound > 0 {
				p.VsLowerBound = float64(p.BytesTotal) / float64(r.LowerBound)
			}
		}
		report.Results = append(report.Results, r)
	}
	return report, nil
}

// runNegentropy reconciles a (initiator) with b (responder).
func runNegentropy(a, b *negentropy.Index, frameLimit int, onlyA, onlyB []events.FactID) Protocol {
	var p Protocol
	var have, need []events.FactID
	var err error
	cpu := cpuclock.Start()
	a.View(func(sa negentropy.Storage) {
		b.View(func(sb negentropy.Storage) {
			var in *negentropy.Initiator
			var resp *negentropy.Responder
			if in, err = negentropy.NewInitiator(sa, frameLimit); err != nil {
				return
			}
			if resp, err = negentropy.NewResponder(sb, frameLimit); err != nil {
				return
			}
			msg, _ := in.Initiate()
			for msg != nil && err == nil {
				p.BytesOut += len(msg)
				var reply []byte
				if reply, err = resp.Reconcile(msg); err != nil {
					return
				}
				p.BytesIn += len(reply)
				p.RoundTrips++
				var h, n []events.FactID
				msg, h, n, err = in.Reconcile(reply)
				have, need = append(have, h...), append(need, n...)
			}
		})
	})
	p.CPUSeconds = cpu.Seconds()
	if err != nil {
		p.Error = err.Error()
	}
	p.Correct = err == nil && sameIDs(have, onlyA) && sameIDs(need, onlyB)
	return p
}

// runRIBLT has b decode the difference from a's coded symbols. The
// session's open reply carries a's fingerprint (16 bytes); each round
// trip is a request for the next symbols (two varints: first symbol and
// count) answered by the symbols. The facts fetched and looked up by the
// prefixes decoded then confirm against the fingerprint.
func runRIBLT(a, b *riblt.Sketch, onlyA, onlyB []events.FactID) Protocol {
	var p Protocol
	var err error
	cpu := cpuclock.Start()
	fingerprint := a.Fingerprint()
	p.BytesIn += len(fingerprint)
	dec := riblt.NewDecoder(b)
	for n := dec.NextBatch(); n > 0 && err == nil; n = dec.NextBatch() {
		from := dec.Received()
		p.BytesOut += len(binary.AppendUvarint(binary.AppendUvarint(nil, uint64(from)), uint64(n)))
		var symbols []byte
		if symbols, err = a.AppendSymbols(nil, from, from+n); err != nil {
			break
		}
		p.BytesIn += len(symbols)
		p.RoundTrips++
		err = dec.AddSymbols(symbols)
	}
	if err == nil && dec.Done() {
		err = dec.Confirm(fingerprint, onlyA, onlyB)
	}
	p.CPUSeconds = cpu.Seconds()
	if err != nil {
		p.Error = err.Error()
	}
	p.Correct = err == nil && dec.Done() && samePrefixes(dec.Remote(), onlyA) && samePrefixes(dec.Local(), onlyB)
	return p
}

// samePrefixes reports whether got are the prefixes of ids.
func samePrefixes(got []riblt.Prefix, ids []events.FactID) bool {
	want := make([]riblt.Prefix, len(ids))
	for i, id := range ids {
		want[i] = riblt.PrefixOf(id)
	}
	cmp := func(x, y riblt.Prefix) int { return bytes.Compare(x[:], y[:]) }
	got = slices.Clone(got)
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	return slices.Equal(got, want)
}

func sameIDs(got, want []events.FactID) bool {
	got, want = slices.Clone(got), slices.Clone(want)
	slices.SortFunc(got, events.FactID.Compare)
	slices.SortFunc(want, events.FactID.Compare)
	return slices.Equal(got, want)
}
