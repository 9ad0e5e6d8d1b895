package events

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names. Each stream is owned (provisioned and written) by one
// service; others only read it as an event log.
const (
	StreamIngress   = "INGRESS"   // owned by guard; clients and peers publish here
	StreamJournal   = "JOURNAL"   // owned by guard (writer) for journal (reader)
	StreamDenied    = "DENIED"    // owned by guard
	StreamReceipts  = "RECEIPTS"  // owned by receipts
	StreamOTA       = "OTA"       // owned by ota
	StreamSnapshots = "SNAPSHOTS" // owned by snapshot
)

// DedupWindow is JOURNAL's duplicate window. It must outlast the longest
// time a guard can take to redeliver an INGRESS message (AckWait times
// MaxDeliver with headroom), so that a redelivered fact is recognised as a
// duplicate and never stored twice.
const DedupWindow = 10 * time.Minute

// IngressStream is the work queue the guard drains. Messages stay until the
// guard acks them, which it does only after JOURNAL has acked the facts.
func IngressStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamIngress,
		Description: "fact batches awaiting the guard",
		Subjects:    []string{IngressPrefix + ".>"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		MaxMsgSize:  MaxIngressMessage,
		Duplicates:  2 * time.Minute,
	}
}

// JournalStream holds every accepted fact and the tokens they cite.
// Nats-Msg-Id is the FactID (or "token:"+hash) so a repeat is dropped.
// AllowAtomicPublish lets the guard commit a batch with one fsync.
func JournalStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               StreamJournal,
		Description:        "accepted facts, one message per fact, and the tokens they cite",
		Subjects:           []string{JournalPrefix + ".>", TokenPrefix + ".>"},
		Retention:          jetstream.LimitsPolicy,
		Storage:            jetstream.FileStorage,
		Duplicates:         DedupWindow,
		AllowAtomicPublish: true,
		AllowDirect:        true,
		DenyDelete:         true,
	}
}

// DeniedStream keeps rejections for a week so operators can see them.
func DeniedStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamDenied,
		Description: "rejected events with their reason code",
		Subjects:    []string{DeniedPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      7 * 24 * time.Hour,
		MaxBytes:    256 << 20,
		Discard:     jetstream.DiscardOld,
	}
}

// Size limits that hold on every peer. Policy may lower them, never raise them.
const (
	MaxIngressMessage = 1 << 20  // one INGRESS message (a batch)
	MaxFactBody       = 64 << 10 // one encoded FactBody
	MaxToken          = 16 << 10 // one Biscuit token
	MaxBatchFacts     = 1000     // facts in one batch
)
