package events

import (
	"github.com/nats-io/nats.go/jetstream"
)

// Receipts subjects, all under fs.receipts and kept in the RECEIPTS stream
// of the peer that publishes them (owned by the receipts service):
//
//	fs.receipts.checkpoint.<peer>            checkpoints <peer> signed of its own log
//	fs.receipts.cosigned.<peer>.<witness>    <peer>'s checkpoints co-signed by this peer as <witness>
//	fs.receipts.fork.<peer>                  evidence that <peer> signed two inconsistent checkpoints

// CosignedSubject carries peer's checkpoints after witness verified them
// consistent with every earlier one it saw and added its signature.
func CosignedSubject(peer, witness PeerID) string {
	return join(ReceiptsPrefix, "cosigned", string(peer), string(witness))
}

// ForkSubject carries evidence that peer signed two checkpoints that are not
// consistent with each other.
func ForkSubject(peer PeerID) string { return join(ReceiptsPrefix, "fork", string(peer)) }

// ReceiptsStream keeps every signed checkpoint, co-signature and fork
// evidence. Nothing is deleted: an auditor needs the old checkpoints to
// demand consistency proofs against, and a fork is evidence for good. A
// checkpoint is at most about 300 bytes and is signed only when the log has
// grown, at most a few times a second.
func ReceiptsStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamReceipts,
		Description: "signed checkpoints of the receipts log, witness co-signatures and fork evidence",
		Subjects:    []string{ReceiptsPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  DedupWindow,
		DenyDelete:  true,
		DenyPurge:   true,
	}
}
