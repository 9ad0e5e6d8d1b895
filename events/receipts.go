package events

import (
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"
)

// Receipts subjects, all under fs.receipts and kept in the RECEIPTS stream
// of the peer that publishes them (owned by the receipts service):
//
//	fs.receipts.checkpoint.<peer>            checkpoints <peer> signed of its own log
//	fs.receipts.cosigned.<peer>.<witness>    <peer>'s checkpoints co-signed by this peer as <witness>
//	fs.receipts.fork.<peer>                  evidence that <peer> signed two inconsistent checkpoints
//
// Checkpoints and co-signed checkpoints are C2SP signed notes (text);
// fork evidence is an eventsv1.ReceiptsFork (EncodeForkEvidence).

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

// ForkEvidence shows that a peer signed two checkpoints that are not
// consistent. When both have one size, the two signed roots alone prove
// the fork. Otherwise Proof is the consistency proof the peer itself gave
// between them, which does not verify: anyone can check that with
// receipts.VerifyConsistency, and an honest log can always give one that
// does. It travels on ForkSubject as an eventsv1.ReceiptsFork.
type ForkEvidence struct {
	Peer    PeerID         `json:"peer"`
	Witness PeerID         `json:"witness"`
	Older   string         `json:"older"` // signed checkpoint seen first (or the smaller one)
	Newer   string         `json:"newer"`
	Proof   tlog.TreeProof `json:"proof"`
	Detail  string         `json:"detail"`
}

// EncodeForkEvidence encodes ev as an eventsv1.ReceiptsFork.
func EncodeForkEvidence(ev ForkEvidence) ([]byte, error) {
	m := &eventsv1.ReceiptsFork{
		Peer:    string(ev.Peer),
		Witness: string(ev.Witness),
		Older:   []byte(ev.Older),
		Newer:   []byte(ev.Newer),
		Detail:  ev.Detail,
	}
	for _, h := range ev.Proof {
		m.Proof = append(m.Proof, h[:])
	}
	return encodeEvent("fork evidence", m)
}

// DecodeForkEvidence decodes fork evidence; a proof hash that is not 32
// bytes is refused with ReasonMalformed. Whether the evidence shows a fork
// is for receipts.VerifyConsistency to say.
func DecodeForkEvidence(data []byte) (ForkEvidence, error) {
	var m eventsv1.ReceiptsFork
	if err := decodeEvent("fork evidence", data, &m); err != nil {
		return ForkEvidence{}, err
	}
	ev := ForkEvidence{
		Peer:    PeerID(m.GetPeer()),
		Witness: PeerID(m.GetWitness()),
		Older:   string(m.GetOlder()),
		Newer:   string(m.GetNewer()),
		Detail:  m.GetDetail(),
	}
	for i, b := range m.GetProof() {
		var h tlog.Hash
		if len(b) != len(h) {
			return ForkEvidence{}, Errorf(ReasonMalformed, "fork evidence proof hash %d is %d bytes, want %d", i, len(b), len(h))
		}
		copy(h[:], b)
		ev.Proof = append(ev.Proof, h)
	}
	return ev, nil
}
