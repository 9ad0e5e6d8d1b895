package events

import (
	"encoding/json"
)

// The journal's request/reply protocol. Clients send these JSON bodies to
// APISubject(JournalProto, op, auth); the guard checks `read` on the
// request's collection and forwards them to ServiceSubject(JournalProto, op,
// auth), where the journal answers. Errors come back as EncodeError bodies
// with HeaderReason set.
const (
	JournalProto = "journal"
	OpGet        = "get"
	OpQuery      = "query"
	OpCount      = "count"
)

// Query page sizes. A query without a limit gets DefaultQueryLimit
// documents; no reply carries more than MaxQueryLimit, so one request can
// never make the journal serialise a whole collection.
const (
	DefaultQueryLimit = 100
	MaxQueryLimit     = 1000
)

// Version orders the facts that wrote a document: by HLC, then by FactID
// to break ties between facts with the same HLC. The zero Version is before
// every fact.
type Version struct {
	HLC  HLC
	Fact FactID
}

// VersionOf returns the version of a fact.
func VersionOf(f *Fact) Version { return Version{HLC: f.HLC, Fact: f.ID} }

// Compare returns -1, 0 or +1 as v is before, equal to, or after o.
func (v Version) Compare(o Version) int {
	if c := v.HLC.Compare(o.HLC); c != 0 {
		return c
	}
	return v.Fact.Compare(o.Fact)
}

// IsZero reports whether v is the zero Version (no fact).
func (v Version) IsZero() bool { return v == Version{} }

type versionJSON struct {
	WallMillis uint64 `json:"wall_millis"`
	Logical    uint32 `json:"logical"`
	Fact       string `json:"fact"`
}

// MarshalJSON renders v as {"wall_millis":…,"logical":…,"fact":"<hex>"}.
func (v Version) MarshalJSON() ([]byte, error) {
	return json.Marshal(versionJSON{WallMillis: v.HLC.WallMillis, Logical: v.HLC.Logical, Fact: v.Fact.String()})
}

// UnmarshalJSON parses the form MarshalJSON writes.
func (v *Version) UnmarshalJSON(b []byte) error {
	var j versionJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return Wrap(ReasonMalformed, err, "decode version")
	}
	id, err := ParseFactID(j.Fact)
	if err != nil {
		return err
	}
	*v = Version{HLC: HLC{WallMillis: j.WallMillis, Logical: j.Logical}, Fact: id}
	return nil
}

// Document is the folded view of one document: the visible fields, whether
// a delete hides it, and the greatest Version of any fact applied to it.
// A document that a delete hides entirely has Deleted set and no fields.
type Document struct {
	Collection string                     `json:"collection"`
	ID         string                     `json:"id"`
	Fields     map[string]json.RawMessage `json:"fields"`
	Deleted    bool                       `json:"deleted,omitempty"`
	Version    Version                    `json:"version"`
}

// DeletedMode chooses how a query treats deleted documents.
type DeletedMode string

// The deleted modes. The zero value excludes deleted documents.
const (
	ExcludeDeleted DeletedMode = ""
	IncludeDeleted DeletedMode = "include"
	OnlyDeleted    DeletedMode = "only"
)

// Check returns a ReasonBadQuery error for an unknown mode.
func (m DeletedMode) Check() error {
	switch m {
	case ExcludeDeleted, IncludeDeleted, OnlyDeleted:
		return nil
	}
	return Errorf(ReasonBadQuery, "deleted mode %q is not one of \"\", %q, %q", string(m), IncludeDeleted, OnlyDeleted)
}

// GetRequest asks for one document. A document that does not exist, or is
// deleted while IncludeDeleted is false, is answered with ReasonNotFound.
type GetRequest struct {
	Collection     string `json:"collection"`
	ID             string `json:"id"`
	IncludeDeleted bool   `json:"include_deleted,omitempty"`
}

// GetReply carries the document.
type GetReply struct {
	Document Document `json:"document"`
}

// Selection is the part of a request that picks documents. Where is an
// expression in the query language (docs/query-language.md); Filter is the
// same filter as its JSON syntax tree (shared/query.Filter). Set at most
// one; neither selects every document of the collection.
type Selection struct {
	Collection string          `json:"collection"`
	Where      string          `json:"where,omitempty"`
	Filter     json.RawMessage `json:"filter,omitempty"`
	Deleted    DeletedMode     `json:"deleted,omitempty"`
}

// SortKey orders query results by one field. Documents without the field
// sort last; ties fall back to the document id.
type SortKey struct {
	Field string `json:"field"`
	Desc  bool   `json:"desc,omitempty"`
}

// QueryRequest asks for one page of matching documents. Cursor is the
// NextCursor of the previous page, or empty for the first; a cursor is only
// valid with the same selection and sort.
type QueryRequest struct {
	Selection
	Sort   []SortKey `json:"sort,omitempty"`
	Limit  int       `json:"limit,omitempty"`
	Cursor string    `json:"cursor,omitempty"`
}

// QueryReply is one page. NextCursor is empty on the last page. Seq is the
// JOURNAL sequence the journal had folded when it answered, so an observer
// can ignore changes it has already seen in this page.
type QueryReply struct {
	Documents  []Document `json:"documents"`
	NextCursor string     `json:"next_cursor,omitempty"`
	Seq        uint64     `json:"seq"`
}

// CountRequest asks how many documents match.
type CountRequest struct {
	Selection
}

// CountReply carries the count, as of JOURNAL sequence Seq.
type CountReply struct {
	Count int    `json:"count"`
	Seq   uint64 `json:"seq"`
}

// Change is published on ChangesSubject after a fact changes a document's
// visible state. Document is the state after the change; Fact is the hex
// FactID that caused it; Seq is its JOURNAL sequence, increasing per
// journal replica. Observers compare Document against their query to tell
// an update from a document that stopped matching. It travels as an
// eventsv1.Change (EncodeChange, DecodeChange).
type Change struct {
	Authority AuthorityID `json:"authority"`
	Document  Document    `json:"document"`
	Fact      string      `json:"fact"`
	Seq       uint64      `json:"seq"`
}
