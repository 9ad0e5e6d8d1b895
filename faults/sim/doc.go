// Package sim is a deterministic convergence simulator for factsync's
// anti-entropy: N peers, each holding a fact set, a negentropy index, a
// riblt sketch and a fold of its documents, reconcile over an in-memory
// network that drops, duplicates, reorders and delays messages and
// partitions and heals peers at random, while devices on the peers write
// signed facts, including concurrent edits of the same document at the
// same HLC.
//
// Everything a run does follows from one seed: keys, clocks, writes,
// faults and the choice of peers and protocols. The reconciliation code is
// the real one (services/antientropy/negentropy and riblt), the facts are
// real signed facts (events.SignFact, decoded with events.DecodeFact on
// arrival) and the documents come from the real fold (shared/fold) unless
// a test swaps in another Folder.
//
// After the chaos phase the network heals and peers keep reconciling
// (still with drops, duplicates and delays) until every peer holds the
// same facts, or a budget of ticks runs out. Run then checks that every
// peer holds every fact written, that all peers' documents are equal, and
// that they equal the fold of the same facts applied in another order.
package sim
