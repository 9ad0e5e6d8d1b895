package natsbackend

import (
	"sync"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/sdk"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// changeFeed follows the journal's change notifications for one authority
// and hands each to the observations and to the writes waiting to become
// visible.
type changeFeed struct {
	sub       *nats.Subscription
	observers *sdk.Observers
	observe   func(events.HLC)

	mu      sync.Mutex
	waiting map[docKey]map[*visibility]struct{}
}

type docKey struct{ collection, id string }

// visibility is one write waiting until the journal shows it.
type visibility struct {
	key     docKey
	fact    events.FactID
	version events.Version
	done    chan struct{}
	// err is set before done closes when the guard denied the write.
	err error
}

func subscribeChanges(nc *nats.Conn, auth events.AuthorityID, observers *sdk.Observers, observe func(events.HLC)) (*changeFeed, error) {
	f := &changeFeed{observers: observers, observe: observe, waiting: map[docKey]map[*visibility]struct{}{}}
	sub, err := nc.Subscribe(events.ChangesPrefix+"."+string(auth)+".>", f.handle)
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "subscribe to document changes")
	}
	// A permission violation comes back asynchronously; the round trip
	// surfaces it here rather than as silence later.
	if err := nc.Flush(); err != nil {
		sub.Unsubscribe()
		return nil, events.Wrap(events.ReasonUnavailable, err, "subscribe to document changes")
	}
	if err := nc.LastError(); err != nil {
		sub.Unsubscribe()
		return nil, events.Wrap(events.ReasonNoRight, err, "subscribe to document changes")
	}
	sub.SetPendingLimits(-1, -1)
	f.sub = sub
	return f, nil
}

func (f *changeFeed) handle(m *nats.Msg) {
	if fact, ok := events.ParseDeniedNoticeSubject(m.Subject); ok {
		f.deny(fact, m.Data)
		return
	}
	c, err := events.DecodeChange(m.Data)
	if err != nil {
		return
	}
	f.observe(c.Document.Version.HLC)
	f.observers.Notify(c.Document, c.Seq)
	f.settle(c.Document, c.Fact)
}

// settle releases the writes to doc that the change shows: the fact
// itself, or any document version at or after theirs.
func (f *changeFeed) settle(doc sdk.Document, factHex string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for v := range f.waiting[docKey{doc.Collection, doc.ID}] {
		if v.fact.String() == factHex || doc.Version.Compare(v.version) >= 0 {
			f.release(v)
		}
	}
}

// deny fails the writes of fact with the reason the guard's notice gives.
func (f *changeFeed) deny(fact events.FactID, data []byte) {
	var d eventsv1.Denial
	if proto.Unmarshal(data, &d) != nil {
		return
	}
	err := events.Errorf(events.Reason(d.GetReason()), "the guard denied the write (fact %s): %s", fact, d.GetDetail())
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, set := range f.waiting {
		for v := range set {
			if v.fact == fact {
				v.err = err
				f.release(v)
			}
		}
	}
}

// await registers a write before it is published, so its change cannot
// slip past.
func (f *changeFeed) await(fact *events.Fact) *visibility {
	v := &visibility{
		key:     docKey{fact.Collection(), fact.Document()},
		fact:    fact.ID,
		version: events.VersionOf(fact),
		done:    make(chan struct{}),
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.waiting[v.key] == nil {
		f.waiting[v.key] = map[*visibility]struct{}{}
	}
	f.waiting[v.key][v] = struct{}{}
	return v
}

// forget drops a registration, released or not.
func (f *changeFeed) forget(v *visibility) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.release(v)
}

// release closes v and unregisters it. Lock must be held.
func (f *changeFeed) release(v *visibility) {
	set := f.waiting[v.key]
	if _, ok := set[v]; !ok {
		return
	}
	delete(set, v)
	if len(set) == 0 {
		delete(f.waiting, v.key)
	}
	close(v.done)
}

func (f *changeFeed) close() { _ = f.sub.Unsubscribe() }
