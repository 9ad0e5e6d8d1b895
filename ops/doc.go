// Package ops holds the operational tests of factsync: the services run
// as separate `factsync serve` processes against one NATS server, the way
// docs/operations.md deploys them, and the tests check the scaling model
// (shared guard consumer, journal partitions handed over when a replica
// dies) and the end-to-end trace of one fact.
package ops
