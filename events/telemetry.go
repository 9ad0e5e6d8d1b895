package events

import "go.opentelemetry.io/otel/attribute"

// Span attribute keys every service uses, so one fact's spans can be
// found by any of them in a trace backend.
const (
	AttrAuthority  = attribute.Key("factsync.authority")
	AttrCollection = attribute.Key("factsync.collection")
	AttrDocument   = attribute.Key("factsync.document")
	AttrFactID     = attribute.Key("factsync.fact.id")
	AttrFactIDs    = attribute.Key("factsync.fact.ids") // a span about several facts
	AttrDevice     = attribute.Key("factsync.device")
	AttrPeer       = attribute.Key("factsync.peer")
	AttrReason     = attribute.Key("factsync.reason")
)

// FactAttributes describes a fact on a span: its authority, collection,
// document, id and device.
func FactAttributes(f *Fact) []attribute.KeyValue {
	return []attribute.KeyValue{
		AttrAuthority.String(string(f.Authority)),
		AttrCollection.String(f.Collection()),
		AttrDocument.String(f.Document()),
		AttrFactID.String(f.ID.String()),
		AttrDevice.String(string(f.Device)),
	}
}
