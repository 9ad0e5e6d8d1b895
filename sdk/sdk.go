package sdk

import (
	"context"
	"time"

	"github.com/factsync/factsync/events"
)

// Document is the folded view of one document, the same type the journal
// serves: visible fields, whether a delete hides it, and the greatest
// Version of any fact applied to it.
type Document = events.Document

// DataSyncBackend is a factsync client: a document store over one
// authority's journal, plus the discovery and sync of peers. Implementations
// are safe for concurrent use.
type DataSyncBackend interface {
	// Initialize connects the backend and makes it ready. It validates cfg
	// and fails with a reason code when it cannot work with it. A backend
	// is initialized once.
	Initialize(ctx context.Context, cfg Config) error
	// Shutdown stops discovery and sync, ends every observation and
	// releases connections. It is safe to call more than once.
	Shutdown(ctx context.Context) error
	// DocumentStore, PeerDiscovery and SyncEngine return the backend's
	// parts. Before Initialize (and after Shutdown) their methods fail
	// with events.ReasonUnavailable.
	DocumentStore() DocumentStore
	PeerDiscovery() PeerDiscovery
	SyncEngine() SyncEngine
	// IsReady reports whether Initialize succeeded and Shutdown has not
	// been called.
	IsReady() bool
	// Info describes the backend and the identities it acts with.
	Info() BackendInfo
}

// BackendInfo describes a backend.
type BackendInfo struct {
	// Name is the backend's kind, e.g. "memory" or "nats".
	Name string
	// Authority and Device are the identities from the Config; empty
	// before Initialize.
	Authority events.AuthorityID
	Device    events.DeviceID
	// Peer is the peer the backend's facts live on: its own id for the
	// memory backend, the connected site's id (when it announced one) for
	// the NATS backend.
	Peer events.PeerID
	// Endpoint is where the backend is connected, e.g. a NATS URL.
	Endpoint string
}

// DocumentStore reads and writes the documents of one authority's journal.
// Every write is a fact signed by the device; concurrent writes to
// different fields of one document both survive, and a field written by
// several devices goes to the greatest (HLC, FactID) on every replica.
type DocumentStore interface {
	// Upsert sets fields of document id in collection, creating it if it
	// does not exist or reviving it if deleted. fields is a map, a struct,
	// or a json.RawMessage / []byte holding a JSON object; other fields of
	// the document keep their values. An empty id generates a fresh one.
	// Upsert returns when the write is visible to Get and Query through
	// this store.
	Upsert(ctx context.Context, collection, id string, fields any) (WriteResult, error)
	// Apply signs several writes and sends them as one batch, returning
	// when all are visible as Upsert does. Each write's Document must be
	// set; use UpsertWrite and DeleteWrite to build them.
	Apply(ctx context.Context, writes ...Write) ([]WriteResult, error)
	// Get returns a document. A document that does not exist or is
	// deleted is an error with events.ReasonNotFound.
	Get(ctx context.Context, collection, id string) (Document, error)
	// Query returns one page of the documents matching q, in q's order.
	// Use All to iterate over every page.
	Query(ctx context.Context, collection string, q Query) (Page, error)
	// Count returns how many documents match q (Sort, Limit and Cursor
	// are ignored).
	Count(ctx context.Context, collection string, q Query) (int, error)
	// Delete hides every field of a document written before it, saying
	// why. Deleting a document that does not exist is not an error: the
	// delete is a fact like any other and hides later-arriving older puts.
	Delete(ctx context.Context, collection, id, reason string) (WriteResult, error)
	// Observe delivers the documents matching q now (Initial), then every
	// change to them, local or remote: Updated when a matching document
	// changes or starts matching, Removed when one is deleted or stops
	// matching. q's Limit and Cursor must be zero; Sort orders Initial.
	// The observation ends when ctx is done or the backend shuts down.
	Observe(ctx context.Context, collection string, q Query) (*Observation, error)
}

// WriteResult identifies the fact a write produced.
type WriteResult struct {
	// ID is the document id, generated when Upsert was given none.
	ID   string
	Fact events.FactID
	HLC  events.HLC
}

// Page is one page of query results.
type Page struct {
	Documents []Document `json:"documents"`
	// NextCursor fetches the next page when passed as Query.Cursor; empty
	// on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// PeerDiscovery finds the peers this backend can sync with.
type PeerDiscovery interface {
	// Start begins discovering peers; Stop ends it. Start on a started
	// discovery is a no-op.
	Start(ctx context.Context) error
	Stop() error
	// DiscoveredPeers returns the peers known now, ordered by id.
	DiscoveredPeers() []PeerInfo
	// AddPeer adds a peer by address (a static peer). What an address is
	// depends on the backend.
	AddPeer(ctx context.Context, address string) (PeerInfo, error)
	// WaitForPeer returns once peer has been discovered, or fails when
	// ctx is done.
	WaitForPeer(ctx context.Context, peer events.PeerID) (PeerInfo, error)
	// Events delivers peer events until ctx is done or discovery stops.
	// A subscriber that falls more than PeerEventBuffer events behind
	// misses events; DiscoveredPeers stays the truth.
	Events(ctx context.Context) <-chan PeerEvent
}

// PeerEventBuffer bounds the queue of a PeerDiscovery.Events subscriber.
const PeerEventBuffer = 64

// PeerInfo describes a discovered peer.
type PeerInfo struct {
	ID events.PeerID
	// Address is how the peer was added or announced, when known.
	Address string
	// Connected reports whether the peer is reachable now.
	Connected bool
	// LastSeen is when the peer was last heard from.
	LastSeen time.Time
}

// PeerEventKind says what happened to a peer.
type PeerEventKind int

// The peer events.
const (
	// PeerDiscovered: a peer became known for the first time.
	PeerDiscovered PeerEventKind = iota + 1
	// PeerConnected: a known peer became reachable.
	PeerConnected
	// PeerDisconnected: a peer stopped being reachable but is still known.
	PeerDisconnected
	// PeerLost: a peer was forgotten (it left, or was not heard from for
	// too long).
	PeerLost
)

func (k PeerEventKind) String() string {
	switch k {
	case PeerDiscovered:
		return "discovered"
	case PeerConnected:
		return "connected"
	case PeerDisconnected:
		return "disconnected"
	case PeerLost:
		return "lost"
	}
	return "unknown"
}

// PeerEvent is one change in what discovery knows about a peer.
type PeerEvent struct {
	Kind PeerEventKind
	Peer PeerInfo
}

// SyncEngine reconciles this backend's fact sets with peers'.
type SyncEngine interface {
	// Start begins syncing with discovered peers: on connect, on every
	// write, and periodically. Stop ends it.
	Start(ctx context.Context) error
	Stop() error
	// ForceSync reconciles with one peer now, both ways, and reports what
	// moved. A session that fails returns an *events.Error with the
	// session's reason code.
	ForceSync(ctx context.Context, peer events.PeerID) (SyncResult, error)
	// SubscribeCollections limits sync to the named collections (added to
	// any earlier subscription). Without a subscription every collection
	// syncs. A backend that can only sync whole authorities says so with
	// events.ReasonUnsupported.
	SubscribeCollections(ctx context.Context, collections ...string) error
	// IsSyncing reports whether the engine is started and its sync is
	// running (for a server backend: the server's sync answers).
	IsSyncing() bool
}

// SyncResult reports one reconciliation with a peer.
type SyncResult struct {
	Peer events.PeerID
	// Sent and Received count the facts that moved each way. The
	// receiving side's checks come after: a fact counted here may still
	// be refused there.
	Sent, Received int
	// Rounds counts the reconciliation round trips.
	Rounds int
	// BytesSent and BytesReceived count what the exchange carried each
	// way, fact bodies and tokens included.
	BytesSent, BytesReceived int
	// Mode names the reconciliation protocol the backend used.
	Mode string
}
