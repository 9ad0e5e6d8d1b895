// Package ota is factsync's upgrade protocol: threshold-approved releases
// and protocol-version activation, as docs/ota.md describes.
//
// A deployment trusts a root policy (policy.go), TUF-style: a threshold of
// root keys signs it, it expires, and a rotation needs a threshold of the
// old and of the new root keys. A release is a proposal (proposal.go)
// approved by a threshold of the policy's approvers, staged and reported
// ready by a quorum of its peers, then activated at its activation time if
// that comes before its deadline. The ceremony is a pure state machine,
// Ledger.Apply (ceremony.go), folded from the OTA stream, so replaying the
// stream rebuilds it. Activation is the one category C operation family
// (category.go); everything else applies optimistically. The Service
// (service.go) answers requests on fs.svc.ota.<op>.<authority>, writes the
// stream, keeps artifacts in an object store and, when asked, stages
// releases for its own peer (stage.go). Client (client.go) is what the CLI
// calls.
package ota
