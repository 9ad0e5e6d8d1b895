package events

import (
	"crypto/sha256"
	"encoding/hex"
)

// OTA across the mesh. One peer, the coordinator, keeps the ceremony's log
// in its OTA stream; every other peer (a follower) copies that log, message
// for message, into its own OTA stream and judges each message itself with
// the same ledger, and sends its writes (proposals, approvals, readiness,
// aborts, rotations) to the coordinator on PeerSubject(coordinator, "ota",
// op), through the coordinator's guard. docs/ota.md describes the design.

// OTAProto is the protocol name of OTA requests: fs.api.ota.<op>.<auth>,
// fs.svc.ota.<op>.<auth> and fs.peer.<peer>.ota.<op>.
const OTAProto = "ota"

// OTA operations between peers. Both need the sync right (OTARights).
const (
	// OTAOpLog reads the OTA stream: OTALogRequest -> OTALogReply.
	OTAOpLog = "log"
	// OTAOpHead tells a follower that the coordinator's log has grown, so
	// that it copies at once rather than at its next tick:
	// OTAHeadRequest -> OTAHeadReply. It is only a hint; the follower
	// trusts nothing in it.
	OTAOpHead = "head"
)

// OTALogRequest asks for the OTA stream's messages after sequence After,
// at most Limit of them (0: the server's bound). AfterDigest is
// OTALogDigest of the asker's own message at After, so that a peer whose
// log is not a prefix of the coordinator's learns so (ReasonConflict)
// rather than copying on from a fork.
type OTALogRequest struct {
	Collection  string `json:"collection"` // always "*"
	After       uint64 `json:"after"`
	AfterDigest string `json:"after_digest,omitempty"`
	Limit       int    `json:"limit,omitempty"`
}

// OTALogEntry is one message of the OTA stream, as stored: the follower
// stores Subject and Data unchanged, at sequence Seq.
type OTALogEntry struct {
	Seq     uint64 `json:"seq"`
	Subject string `json:"subject"`
	Data    []byte `json:"data"`
}

// OTALogReply is the next stretch of the log, in order from After+1. Last
// is the stream's last sequence when the reply was made.
type OTALogReply struct {
	Entries []OTALogEntry `json:"entries"`
	Last    uint64        `json:"last"`
}

// OTAHeadRequest says the coordinator's log reached sequence Last.
type OTAHeadRequest struct {
	Collection string `json:"collection"`
	Last       uint64 `json:"last"`
}

// OTAHeadReply acknowledges a head notice.
type OTAHeadReply struct{}

// OTALogDigest names one message of the OTA stream: the hex SHA-256 of its
// subject, a zero byte and its data.
func OTALogDigest(subject string, data []byte) string {
	h := sha256.New()
	h.Write([]byte(subject))
	h.Write([]byte{0})
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}
