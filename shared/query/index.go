package query

import (
	"encoding/json"
	"maps"
	"slices"

	"github.com/factsync/factsync/events"
)

// Index maps each value of the declared fields to the documents of one
// collection that hold it, so that eq and in on those fields look up
// their candidates instead of scanning. It holds visible fields only; a
// deleted document has none. An Index is not safe for concurrent use.
type Index struct {
	byField map[string]map[string]map[string]struct{} // field -> value key -> ids
}

// NewIndex returns an empty index over the named fields.
func NewIndex(fields ...string) *Index {
	ix := &Index{byField: map[string]map[string]map[string]struct{}{}}
	for _, f := range fields {
		ix.byField[f] = map[string]map[string]struct{}{}
	}
	return ix
}

// Fields returns the indexed field names in ascending order.
func (ix *Index) Fields() []string { return slices.Sorted(maps.Keys(ix.byField)) }

// Update moves a document from its old field values to its new ones.
// before is the zero Document when the document is new.
func (ix *Index) Update(before, after events.Document) {
	for field, values := range ix.byField {
		oldKey, hadOld := indexKey(before.Fields[field])
		newKey, hasNew := indexKey(after.Fields[field])
		if hadOld == hasNew && oldKey == newKey {
			continue
		}
		if hadOld {
			delete(values[oldKey], before.ID)
			if len(values[oldKey]) == 0 {
				delete(values, oldKey)
			}
		}
		if hasNew {
			if values[newKey] == nil {
				values[newKey] = map[string]struct{}{}
			}
			values[newKey][after.ID] = struct{}{}
		}
	}
}

// indexKey is the canonical JSON of a raw value, so that values equal
// under the filter's equality (1 and 1.0, reordered object keys) share a
// key.
func indexKey(raw json.RawMessage) (string, bool) {
	if raw == nil {
		return "", false
	}
	v, err := decodeValue(raw)
	if err != nil {
		return "", false
	}
	return valueKey(v), true
}

func valueKey(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// candidates returns a superset of the ids m can match, or false when the
// index cannot narrow m down (then the caller scans).
func (ix *Index) candidates(m *matcher) (map[string]struct{}, bool) {
	if ix == nil {
		return nil, false
	}
	switch m.op {
	case Eq:
		values, ok := ix.byField[m.field]
		if !ok {
			return nil, false
		}
		return values[valueKey(m.value)], true
	case In:
		values, ok := ix.byField[m.field]
		if !ok {
			return nil, false
		}
		out := map[string]struct{}{}
		for _, v := range m.value.([]any) {
			maps.Copy(out, values[valueKey(v)])
		}
		return out, true
	case And:
		// Any indexed conjunct bounds the result; take the smallest.
		var best map[string]struct{}
		found := false
		for _, a := range m.args {
			if c, ok := ix.candidates(a); ok && (!found || len(c) < len(best)) {
				best, found = c, true
			}
		}
		return best, found
	case Or:
		out := map[string]struct{}{}
		for _, a := range m.args {
			c, ok := ix.candidates(a)
			if !ok {
				return nil, false
			}
			maps.Copy(out, c)
		}
		return out, true
	}
	return nil, false
}
