package sdk

import (
	"context"
	"sync"

	"github.com/factsync/factsync/events"
)

// EventKind says what an observation event reports.
type EventKind int

// The observation events.
const (
	// Initial carries the whole matching set. It comes first, and again
	// (with Resync set) whenever the observer fell too far behind.
	Initial EventKind = iota + 1
	// Updated carries a matching document that changed or started matching.
	Updated
	// Removed carries a document that left the matching set; Cause says
	// whether it was deleted or stopped matching.
	Removed
)

func (k EventKind) String() string {
	switch k {
	case Initial:
		return "initial"
	case Updated:
		return "updated"
	case Removed:
		return "removed"
	}
	return "unknown"
}

// RemoveCause says why a document left an observation's matching set.
type RemoveCause int

// The causes of Removed.
const (
	// CauseDeleted: a delete hid the document.
	CauseDeleted RemoveCause = iota + 1
	// CauseStoppedMatching: the document changed and no longer matches.
	CauseStoppedMatching
)

func (c RemoveCause) String() string {
	switch c {
	case CauseDeleted:
		return "deleted"
	case CauseStoppedMatching:
		return "stopped_matching"
	}
	return ""
}

// Event is one observation event.
type Event struct {
	Kind EventKind
	// Documents is the matching set, for Initial, in the query's order.
	Documents []Document
	// Resync marks an Initial sent because the observer fell behind: it
	// replaces everything delivered before it.
	Resync bool
	// Document is the document's state now, for Updated and Removed.
	Document Document
	// Cause is set for Removed.
	Cause RemoveCause
}

// Observation is a live query. Read its events from Events until the
// channel closes; Err then says why. An observer that does not keep up
// never slows the store: once more than the Config's ObserveBuffer changes
// are waiting, they are dropped and the next event is a fresh Initial with
// Resync set.
type Observation struct {
	src    ObservationSource
	events chan Event
	done   chan struct{}
	cancel context.CancelFunc
	wake   chan struct{}

	mu     sync.Mutex
	queue  []docChange // changes not yet classified, at most src.Buffer
	resync bool        // the queue overflowed; the next event is an Initial
	err    error
}

type docChange struct {
	doc Document
	seq uint64
}

// ObservationSource is what a backend provides to run an Observation.
type ObservationSource struct {
	// Match reports whether a document (in its current state, possibly
	// deleted) belongs to the matching set.
	Match func(Document) bool
	// Snapshot returns the matching set in the query's order, and the
	// backend's change sequence it reflects: every change with a sequence
	// at or below it is already in the set.
	Snapshot func(ctx context.Context) ([]Document, uint64, error)
	// Buffer bounds the changes waiting for a slow observer.
	Buffer int
}

func newObservation(ctx context.Context, src ObservationSource) (*Observation, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	if src.Buffer <= 0 {
		src.Buffer = DefaultObserveBuffer
	}
	return &Observation{
		src:    src,
		events: make(chan Event),
		done:   make(chan struct{}),
		cancel: cancel,
		wake:   make(chan struct{}, 1),
	}, ctx
}

// Events delivers the observation's events. It is closed when the
// observation ends.
func (o *Observation) Events() <-chan Event { return o.events }

// Done is closed when the observation has ended.
func (o *Observation) Done() <-chan struct{} { return o.done }

// Err says why the observation ended: the context's error, or a backend
// failure. It is nil while the observation runs.
func (o *Observation) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

// Close ends the observation.
func (o *Observation) Close() { o.cancel() }

// Notify reports that a document of the observed collection changed, as
// of the backend's change sequence seq. It never blocks.
func (o *Observation) Notify(doc Document, seq uint64) {
	o.mu.Lock()
	switch {
	case o.resync:
	case len(o.queue) >= o.src.Buffer:
		o.resync, o.queue = true, nil
	default:
		o.queue = append(o.queue, docChange{doc: doc, seq: seq})
	}
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// run sends an Initial, then classifies queued changes against the
// matching set it delivered, until the queue overflows (start over with a
// resync Initial) or the context ends.
func (o *Observation) run(ctx context.Context) {
	defer close(o.done)
	defer close(o.events)
	for resync := false; ; resync = true {
		o.mu.Lock()
		o.queue, o.resync = nil, false
		o.mu.Unlock()
		docs, since, err := o.src.Snapshot(ctx)
		if err != nil {
			o.end(err)
			return
		}
		delivered := make(map[string]events.Version, len(docs))
		for _, d := range docs {
			delivered[d.ID] = d.Version
		}
		if !o.send(ctx, Event{Kind: Initial, Documents: docs, Resync: resync}) {
			return
		}
		if !o.follow(ctx, delivered, since) {
			return
		}
	}
}

// follow delivers changes until a resync is due (true) or the context
// ends (false).
func (o *Observation) follow(ctx context.Context, delivered map[string]events.Version, since uint64) bool {
	for {
		o.mu.Lock()
		resync, pending := o.resync, len(o.queue) > 0
		var c docChange
		if pending && !resync {
			c, o.queue = o.queue[0], o.queue[1:]
		}
		o.mu.Unlock()
		switch {
		case resync:
			return true
		case !pending:
			select {
			case <-o.wake:
				continue
			case <-ctx.Done():
				o.end(ctx.Err())
				return false
			}
		}
		if ev, ok := o.classify(c, delivered, since); ok && !o.send(ctx, ev) {
			return false
		}
	}
}

// classify turns a change into the event the observer should see, if any.
// A change already reflected in the snapshot, or older than what was
// delivered for that document, is stale and dropped.
func (o *Observation) classify(c docChange, delivered map[string]events.Version, since uint64) (Event, bool) {
	if c.seq <= since {
		return Event{}, false
	}
	prev, in := delivered[c.doc.ID]
	if in && c.doc.Version.Compare(prev) <= 0 {
		return Event{}, false
	}
	if o.src.Match(c.doc) {
		delivered[c.doc.ID] = c.doc.Version
		return Event{Kind: Updated, Document: c.doc}, true
	}
	if !in {
		return Event{}, false
	}
	delete(delivered, c.doc.ID)
	cause := CauseStoppedMatching
	if c.doc.Deleted {
		cause = CauseDeleted
	}
	return Event{Kind: Removed, Document: c.doc, Cause: cause}, true
}

func (o *Observation) send(ctx context.Context, ev Event) bool {
	select {
	case o.events <- ev:
		return true
	case <-ctx.Done():
		o.end(ctx.Err())
		return false
	}
}

func (o *Observation) end(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err == nil {
		o.err = err
	}
}

// Observers is the set of live observations of a backend, by collection.
// Backends start observations through it and fan changes out with Notify;
// the zero value is ready to use.
type Observers struct {
	mu   sync.Mutex
	byCo map[string]map[*Observation]struct{}
}

// Start starts an observation of collection and registers it for
// changes before it takes its first snapshot, so no change can fall
// between the two. Backends call it from Observe and feed every change with
// Notify. The observation is unregistered when it ends.
func (s *Observers) Start(ctx context.Context, collection string, src ObservationSource) *Observation {
	o, ctx := newObservation(ctx, src)
	s.mu.Lock()
	if s.byCo == nil {
		s.byCo = map[string]map[*Observation]struct{}{}
	}
	if s.byCo[collection] == nil {
		s.byCo[collection] = map[*Observation]struct{}{}
	}
	s.byCo[collection][o] = struct{}{}
	s.mu.Unlock()
	go func() {
		o.run(ctx)
		s.mu.Lock()
		delete(s.byCo[collection], o)
		s.mu.Unlock()
	}()
	return o
}

// Notify passes a changed document to every observation of its collection.
func (s *Observers) Notify(doc Document, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for o := range s.byCo[doc.Collection] {
		o.Notify(doc, seq)
	}
}

// Watching reports whether any observation follows collection.
func (s *Observers) Watching(collection string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byCo[collection]) > 0
}

// CloseAll ends every observation.
func (s *Observers) CloseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, set := range s.byCo {
		for o := range set {
			o.Close()
		}
	}
}
