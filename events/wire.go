package events

import (
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Every event that travels on a stream or an event subject is a protobuf
// message of events/v1; the Go types in this package convert to and from
// them, so services code against the Go types and never see the wire form.
// Request and reply bodies of the client and peer APIs stay JSON
// (docs/data-model.md, "Encodings").

// encodeEvent marshals an event message. No signature or identity covers
// an event envelope, only the opaque signed bytes it carries, so the
// encoding need not be canonical. It is deterministic (map entries
// sorted) so that one build encodes one value to the same bytes, which a
// Nats-Msg-Id derived from the bytes relies on (receipts' fork evidence).
func encodeEvent(what string, m proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, Wrap(ReasonMalformed, err, "encode "+what)
	}
	return b, nil
}

// decodeEvent unmarshals an event message, with ReasonMalformed when the
// bytes are not one.
func decodeEvent(what string, data []byte, m proto.Message) error {
	if err := proto.Unmarshal(data, m); err != nil {
		return Wrap(ReasonMalformed, err, what+" does not decode")
	}
	return nil
}

// timestampOf encodes t; the zero time travels as no timestamp.
func timestampOf(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// timeOf decodes a timestamp in UTC; no timestamp is the zero time.
func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
