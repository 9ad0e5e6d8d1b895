package snapshot

import (
	"encoding/hex"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
)

// A cut is a whole second S of HLC wall-clock time. The snapshot at S holds
// the state of exactly the facts with HLC.Seconds() < S.
//
// Anti-entropy orders items by (HLC.Seconds(), FactID) and HLCs order facts
// by (HLC, FactID); a whole-second boundary splits both orders at the same
// place, so "before the cut" is one set whichever order a peer uses, and
// the range after the cut is the negentropy range starting at the bound
// (S, no id bytes) — see AfterCut.

// ItemOf is a fact's item in the anti-entropy index.
func ItemOf(f *events.Fact) negentropy.Item {
	return negentropy.Item{Timestamp: uint64(f.HLC.Seconds()), ID: f.ID}
}

// BeforeCut reports whether a fact falls before the cut.
func BeforeCut(f *events.Fact, cut uint32) bool { return f.HLC.Seconds() < cut }

// AfterCut is the first item at or after the cut: the lower bound of the
// range anti-entropy reconciles after restoring a snapshot at cut.
func AfterCut(cut uint32) negentropy.Item { return negentropy.Item{Timestamp: uint64(cut)} }

// SetSummary is the negentropy fingerprint and size of a fact set, and
// the id sum the fingerprint hashes. The sum is what lets a peer that
// holds only part of the set (restored from a snapshot, or pruned) count
// the rest back in at a later cut: sums add, fingerprints do not.
type SetSummary struct {
	Fingerprint [negentropy.FingerprintSize]byte
	Count       uint64
	Sum         negentropy.Accumulator
}

// summaryOfSum is the summary of a set of count ids whose sum is sum.
func summaryOfSum(sum negentropy.Accumulator, count uint64) SetSummary {
	return SetSummary{Fingerprint: sum.Fingerprint(count), Count: count, Sum: sum}
}

// Hex is the fingerprint in hex.
func (s SetSummary) Hex() string { return hex.EncodeToString(s.Fingerprint[:]) }

// SummaryBefore is the fingerprint of every item of s before the cut: the
// fingerprint anti-entropy would compute for the range [0, cut).
func SummaryBefore(s negentropy.Storage, cut uint32) SetSummary {
	end := s.LowerBound(AfterCut(cut))
	return summaryOf(s, 0, end)
}

// SummaryAfter is the fingerprint of every item of s at or after the cut:
// the range a bootstrapped peer reconciles.
func SummaryAfter(s negentropy.Storage, cut uint32) SetSummary {
	return summaryOf(s, s.LowerBound(AfterCut(cut)), s.Len())
}

func summaryOf(s negentropy.Storage, from, to int) SetSummary {
	return summaryOfSum(s.Sum(from, to), uint64(to-from))
}

// IndexSummary runs SummaryBefore (after=false) or SummaryAfter on an
// index under its read lock.
func IndexSummary(x *negentropy.Index, cut uint32, after bool) SetSummary {
	var out SetSummary
	x.View(func(s negentropy.Storage) {
		if after {
			out = SummaryAfter(s, cut)
		} else {
			out = SummaryBefore(s, cut)
		}
	})
	return out
}

// StorageAfterCut is the part of s at or after the cut, as a Storage of
// its own: a peer restored from a snapshot at cut reconciles it (both
// sides restricted the same way) and leaves the range before the cut,
// which the snapshot settled, alone.
func StorageAfterCut(s negentropy.Storage, cut uint32) negentropy.Storage {
	return negentropy.From(s, AfterCut(cut))
}
