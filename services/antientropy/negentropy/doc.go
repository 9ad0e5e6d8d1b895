// Package negentropy speaks the negentropy range-based set reconciliation
// protocol, version 1 (NIP-77), byte for byte, over an ordered index that
// keeps range fingerprints up to date as items arrive.
//
// Two peers each hold a set of items ordered by (timestamp, id). The
// initiator sends fingerprints of ranges of its set; the responder compares
// them with fingerprints of the same ranges of its own set, skips ranges
// that match and splits ranges that differ, until a range is small enough to
// send as a list of ids. Each round trip narrows the differing ranges by a
// factor of 16, so a session takes O(log n) round trips however the ids are
// chosen.
//
// The wire format is the one of hoytech/negentropy and nostr-tools' nip77,
// so any conforming implementation can reconcile with factsync. factsync
// uses the fact's HLC wall-clock seconds (events.HLC.Seconds) as the
// timestamp: the JavaScript implementations encode varints with 32-bit
// arithmetic and never converge on timestamps of 2^32 or more.
package negentropy
