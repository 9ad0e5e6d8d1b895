// Package sdk is factsync's Go client. It follows the shape of peat's sync
// traits in Go idiom:
//
//   - DataSyncBackend is the entry point: Initialize it with a Config (the
//     authority, the device key and the device's Biscuit token), then use
//     its DocumentStore, PeerDiscovery and SyncEngine.
//   - DocumentStore reads and writes documents. A write is a fact signed by
//     the device key (see Signer); the backend folds facts into documents
//     with the same deterministic fold the journal uses, so every replica
//     that holds the same facts shows the same documents.
//   - PeerDiscovery and SyncEngine find other peers and reconcile fact sets
//     with them.
//
// Two backends implement DataSyncBackend: sdk/memory, an in-process backend
// for apps' unit tests, and sdk/natsbackend, which talks to a running
// factsync. Both pass the one acceptance suite in sdk/sdktest.
//
// Every error a caller can cause is an *events.Error with a stable reason
// code; branch on it with events.ReasonOf or events.IsReason.
package sdk
