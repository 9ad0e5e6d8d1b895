package guard

import (
	"github.com/factsync/factsync/events"
	"go.opentelemetry.io/otel/attribute"
)

// decisionAttributes describe one INGRESS message's decision on its span:
// the authority, the accepted facts (with the collection and id of a
// single fact, the common case) and the reason codes of the denials, so a
// trace backend finds a fact's path by its id or a rejection by reason.
func decisionAttributes(subject string, v verdict) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		attribute.Int("factsync.accepted", len(v.accepted)),
		attribute.Int("factsync.denied", len(v.denials)),
	}
	if auth, err := events.ParseIngressFactSubject(subject); err == nil {
		attrs = append(attrs, events.AttrAuthority.String(string(auth)))
	}
	if len(v.accepted) == 1 {
		f := v.accepted[0]
		attrs = append(attrs, events.AttrCollection.String(f.Collection()), events.AttrFactID.String(f.ID.String()))
	}
	if len(v.accepted) > 0 {
		ids := make([]string, len(v.accepted))
		for i, f := range v.accepted {
			ids[i] = f.ID.String()
		}
		attrs = append(attrs, attribute.StringSlice("factsync.fact.ids", ids))
	}
	if len(v.denials) > 0 {
		reasons := make([]string, len(v.denials))
		for i, d := range v.denials {
			reasons[i] = d.GetReason()
		}
		attrs = append(attrs, attribute.StringSlice("factsync.reasons", reasons))
		if len(v.denials) == 1 {
			attrs = append(attrs, events.AttrReason.String(reasons[0]))
		}
	}
	return attrs
}
