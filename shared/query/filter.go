// Package query is factsync's filter language: a JSON syntax tree (Filter)
// that travels on the wire, a parser for the written form
// (`priority >= 2 and status == "open"`), evaluation against a document's
// fields, secondary indexes on declared fields, and paged, sorted
// execution over a document store. The journal and the SDK's in-memory
// backend share it, so both answer every query the same way.
//
// A filter that is malformed, names an unknown operator or compares with a
// value of the wrong type is refused with events.ReasonBadQuery, naming the
// problem and where it is. Nothing ever falls back to matching everything.
package query

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/factsync/factsync/events"
)

// Op is a filter operator.
type Op string

// The operators.
const (
	Eq           Op = "eq"            // field equals value (any JSON value; 1 == 1.0)
	Ne           Op = "ne"            // not eq: also matches a missing field
	Lt           Op = "lt"            // number or string order; other types never match
	Lte          Op = "lte"           //
	Gt           Op = "gt"            //
	Gte          Op = "gte"           //
	In           Op = "in"            // field equals one element of an array value
	Contains     Op = "contains"      // array field has an equal element, or string field has the substring
	Prefix       Op = "prefix"        // string field starts with the string value
	Exists       Op = "exists"        // field is present (null counts as present)
	And          Op = "and"           // every arg matches (at least one arg)
	Or           Op = "or"            // some arg matches (at least one arg)
	Not          Op = "not"           // the one arg does not match
	WithinRadius Op = "within_radius" // geo point within Geo[2] meters of (Geo[0], Geo[1])
	WithinBounds Op = "within_bounds" // geo point in the box Geo = [minLat, minLon, maxLat, maxLon]
)

// Filter is one node of a filter's syntax tree, in the shape it has on the
// wire. Which members are set depends on Op: Field and Value for
// comparisons, Field alone for exists, Args for and/or/not, Field and Geo
// for the geo operators.
type Filter struct {
	Op    Op              `json:"op"`
	Field string          `json:"field,omitempty"`
	Value json.RawMessage `json:"value,omitempty"`
	Args  []Filter        `json:"args,omitempty"`
	Geo   []float64       `json:"geo,omitempty"`
}

// Limits on a filter's size, so a hostile request cannot make the journal
// recurse or loop without bound.
const (
	MaxDepth     = 32
	MaxNodes     = 256
	MaxWhereLen  = 4096
	EarthRadiusM = 6371008.8 // mean Earth radius in meters (IUGG), for haversine
)

// DecodeFilter parses the JSON form of a filter and checks it. Unknown
// members are refused so that a misspelt key is an error, not a wider
// match.
func DecodeFilter(raw []byte) (*Filter, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var f Filter
	if err := dec.Decode(&f); err != nil {
		return nil, events.Wrap(events.ReasonBadQuery, err, "filter is not a valid JSON filter tree")
	}
	if dec.More() {
		return nil, events.Errorf(events.ReasonBadQuery, "filter has trailing data after the JSON tree")
	}
	if err := f.Check(); err != nil {
		return nil, err
	}
	return &f, nil
}

// Check validates the whole tree: known operators, the members each one
// needs, value types, and the size limits. Errors name the node by its path
// (filter.args[1]).
func (f *Filter) Check() error {
	nodes := 0
	var walk func(n *Filter, path string, depth int) error
	walk = func(n *Filter, path string, depth int) error {
		nodes++
		if depth > MaxDepth || nodes > MaxNodes {
			return events.Errorf(events.ReasonBadQuery, "at %s: filter is deeper than %d or larger than %d nodes", path, MaxDepth, MaxNodes)
		}
		if err := n.checkNode(path); err != nil {
			return err
		}
		for i := range n.Args {
			if err := walk(&n.Args[i], fmt.Sprintf("%s.args[%d]", path, i), depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(f, "filter", 1)
}

// checkNode validates one node, not its children; at says where the node
// is (a tree path or a column of the written form).
func (f *Filter) checkNode(at string) error {
	bad := func(format string, args ...any) error {
		return events.Errorf(events.ReasonBadQuery, "at %s: %s", at, fmt.Sprintf(format, args...))
	}
	switch f.Op {
	case And, Or, Not:
		if f.Field != "" || f.Value != nil || f.Geo != nil {
			return bad("%s takes only args", f.Op)
		}
		if f.Op == Not && len(f.Args) != 1 {
			return bad("not takes exactly one arg, got %d", len(f.Args))
		}
		if len(f.Args) == 0 {
			// An empty and would match everything: refuse it rather
			// than guess.
			return bad("%s needs at least one arg", f.Op)
		}
		return nil
	case "":
		return bad("missing op")
	}
	if !knownLeaf[f.Op] {
		return bad("unknown op %q", f.Op)
	}
	if err := checkField(f.Field); err != nil {
		return bad("%s needs a field: %s", f.Op, err.(*events.Error).Detail)
	}
	if f.Args != nil {
		return bad("%s takes no args", f.Op)
	}
	switch f.Op {
	case WithinRadius, WithinBounds:
		if f.Value != nil {
			return bad("%s takes geo, not value", f.Op)
		}
		return checkGeo(f.Op, f.Geo, bad)
	case Exists:
		if f.Value != nil || f.Geo != nil {
			return bad("exists takes only a field")
		}
		return nil
	}
	if f.Geo != nil {
		return bad("%s takes value, not geo", f.Op)
	}
	if f.Value == nil {
		return bad("%s on %q needs a value", f.Op, f.Field)
	}
	v, err := decodeValue(f.Value)
	if err != nil {
		return bad("value of %s on %q is not JSON: %v", f.Op, f.Field, err)
	}
	switch f.Op {
	case Lt, Lte, Gt, Gte:
		if !isOrdered(v) {
			return bad("%s on %q needs a number or a string, got %s", f.Op, f.Field, typeName(v))
		}
	case In:
		if _, ok := v.([]any); !ok {
			return bad("in on %q needs an array, got %s", f.Field, typeName(v))
		}
	case Prefix:
		if _, ok := v.(string); !ok {
			return bad("prefix on %q needs a string, got %s", f.Field, typeName(v))
		}
	}
	return nil
}

// checkField accepts the names a fact's fields can have: a fact's names
// come from JSON, so they are also valid UTF-8.
func checkField(name string) error {
	if !utf8.ValidString(name) {
		return events.Errorf(events.ReasonBadQuery, "field name %q is not valid UTF-8", name)
	}
	return events.CheckFieldName(name)
}

var knownLeaf = map[Op]bool{Eq: true, Ne: true, Lt: true, Lte: true, Gt: true, Gte: true, In: true,
	Contains: true, Prefix: true, Exists: true, WithinRadius: true, WithinBounds: true}

func checkGeo(op Op, g []float64, bad func(string, ...any) error) error {
	want := map[Op]int{WithinRadius: 3, WithinBounds: 4}[op]
	if len(g) != want {
		return bad("%s needs %d numbers, got %d", op, want, len(g))
	}
	for _, x := range g {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return bad("%s needs finite numbers", op)
		}
	}
	lats, lons := []float64{g[0]}, []float64{g[1]}
	if op == WithinBounds {
		lats, lons = append(lats, g[2]), append(lons, g[3])
		if g[0] > g[2] {
			return bad("within_bounds: minLat %g is above maxLat %g", g[0], g[2])
		}
	} else if g[2] < 0 {
		return bad("within_radius: radius %g meters is negative", g[2])
	}
	for _, lat := range lats {
		if lat < -90 || lat > 90 {
			return bad("%s: latitude %g is outside [-90, 90]", op, lat)
		}
	}
	for _, lon := range lons {
		if lon < -180 || lon > 180 {
			return bad("%s: longitude %g is outside [-180, 180]", op, lon)
		}
	}
	return nil
}

// decodeValue decodes one JSON value, refusing trailing data.
func decodeValue(raw []byte) (any, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data")
	}
	return v, nil
}

func isOrdered(v any) bool {
	switch v.(type) {
	case float64, string:
		return true
	}
	return false
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	}
	return "an object"
}
