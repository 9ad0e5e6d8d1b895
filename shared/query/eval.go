package query

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
)

// record gives a matcher a document's fields, decoding each one at most
// once however many predicates read it.
type record struct {
	raw     map[string]json.RawMessage
	decoded map[string]any
}

func newRecord(fields map[string]json.RawMessage) *record {
	return &record{raw: fields}
}

// get returns the decoded field and whether it is present.
func (r *record) get(name string) (any, bool) {
	if v, ok := r.decoded[name]; ok {
		return v, true
	}
	raw, ok := r.raw[name]
	if !ok {
		return nil, false
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return nil, false
	}
	if r.decoded == nil {
		r.decoded = map[string]any{}
	}
	r.decoded[name] = v
	return v, true
}

// matcher is a checked filter with its values decoded once.
type matcher struct {
	op    Op
	field string
	value any
	args  []*matcher
	geo   []float64
}

// compile turns a checked Filter into a matcher.
func compile(f *Filter) *matcher {
	m := &matcher{op: f.Op, field: f.Field, geo: f.Geo}
	if f.Value != nil {
		m.value, _ = decodeValue(f.Value)
	}
	for i := range f.Args {
		m.args = append(m.args, compile(&f.Args[i]))
	}
	return m
}

func (m *matcher) match(r *record) bool {
	switch m.op {
	case And:
		for _, a := range m.args {
			if !a.match(r) {
				return false
			}
		}
		return true
	case Or:
		for _, a := range m.args {
			if a.match(r) {
				return true
			}
		}
		return false
	case Not:
		return !m.args[0].match(r)
	}
	v, present := r.get(m.field)
	switch m.op {
	case Exists:
		return present
	case Ne:
		return !present || !equal(v, m.value)
	}
	if !present {
		return false
	}
	switch m.op {
	case Eq:
		return equal(v, m.value)
	case Lt, Lte, Gt, Gte:
		c, ok := compareOrdered(v, m.value)
		if !ok {
			return false
		}
		switch m.op {
		case Lt:
			return c < 0
		case Lte:
			return c <= 0
		case Gt:
			return c > 0
		}
		return c >= 0
	case In:
		for _, want := range m.value.([]any) {
			if equal(v, want) {
				return true
			}
		}
		return false
	case Contains:
		switch have := v.(type) {
		case []any:
			for _, e := range have {
				if equal(e, m.value) {
					return true
				}
			}
		case string:
			s, ok := m.value.(string)
			return ok && strings.Contains(have, s)
		}
		return false
	case Prefix:
		s, ok := v.(string)
		return ok && strings.HasPrefix(s, m.value.(string))
	case WithinRadius:
		lat, lon, ok := point(v)
		return ok && haversine(lat, lon, m.geo[0], m.geo[1]) <= m.geo[2]
	case WithinBounds:
		lat, lon, ok := point(v)
		if !ok || lat < m.geo[0] || lat > m.geo[2] {
			return false
		}
		if m.geo[1] <= m.geo[3] {
			return lon >= m.geo[1] && lon <= m.geo[3]
		}
		// minLon > maxLon: the box crosses the antimeridian.
		return lon >= m.geo[1] || lon <= m.geo[3]
	}
	return false
}

// equal compares decoded JSON values; numbers compare as float64.
func equal(a, b any) bool { return reflect.DeepEqual(a, b) }

// compareOrdered compares two numbers or two strings; other pairs are
// unordered.
func compareOrdered(a, b any) (int, bool) {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		if !ok {
			return 0, false
		}
		switch {
		case x < y:
			return -1, true
		case x > y:
			return 1, true
		}
		return 0, true
	case string:
		y, ok := b.(string)
		return strings.Compare(x, y), ok
	}
	return 0, false
}

// point reads a geo point field: an object {"lat": <deg>, "lon": <deg>}.
func point(v any) (lat, lon float64, ok bool) {
	obj, isObj := v.(map[string]any)
	if !isObj {
		return 0, 0, false
	}
	lat, okLat := obj["lat"].(float64)
	lon, okLon := obj["lon"].(float64)
	return lat, lon, okLat && okLon && lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180
}

// haversine returns the great-circle distance in meters.
func haversine(lat1, lon1, lat2, lon2 float64) float64 {
	rad := math.Pi / 180
	dLat, dLon := (lat2-lat1)*rad, (lon2-lon1)*rad
	h := math.Sin(dLat/2)*math.Sin(dLat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * EarthRadiusM * math.Asin(math.Sqrt(math.Min(1, h)))
}
