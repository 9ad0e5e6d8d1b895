package natsbackend

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
)

// engine is the NATS backend's SyncEngine. Sync between peers is the
// server's job: the factsync peer's anti-entropy service keeps every
// authority it holds a sync credential for in step with its peers on its
// own, on an interval and whenever a peer connects. The engine drives it
// through the service's control requests (events.AntiEntropyOpSync and
// AntiEntropyOpStatus, sent through the guard, which checks the device's
// `sync` right):
//
//   - ForceSync asks for a session with one peer now and returns its
//     report;
//   - a started engine also asks for a session with every peer after
//     each write of this backend, so writes travel at once rather than at
//     the server's next interval, and follows the status every
//     StatusInterval to report IsSyncing.
type engine struct {
	b *Backend

	mu      sync.Mutex
	running bool
	healthy bool // the service answered the last request, and initiates for the authority
	stop    context.CancelFunc
	done    chan struct{}
	wrote   chan struct{} // capacity 1: the writes since the last sync, coalesced
}

var _ sdk.SyncEngine = (*engine)(nil)

func newEngine(b *Backend) *engine { return &engine{b: b, wrote: make(chan struct{}, 1)} }

// Start checks that this peer syncs the authority (the service answers,
// the device holds `sync`, and the peer holds a sync credential for the
// authority), then follows it.
func (e *engine) Start(ctx context.Context) error {
	if _, _, err := e.b.live(); err != nil {
		return err
	}
	st, err := e.b.syncStatus(ctx)
	if err != nil {
		return err
	}
	if !st.Initiates {
		return errNotInitiating(st.Peer)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running {
		return nil
	}
	runCtx, cancel := context.WithCancel(context.Background())
	e.running, e.healthy, e.stop, e.done = true, true, cancel, make(chan struct{})
	go e.run(runCtx)
	return nil
}

func errNotInitiating(peer events.PeerID) error {
	return events.Errorf(events.ReasonNotConfigured,
		"peer %s holds no sync token for this authority, so it does not sync it (put one in its credentials directory, DATA/sync-tokens)", peer)
}

// busyRetry is how soon a sync the server turned away as busy is asked
// for again: the server starts at most about one session a second with
// each peer.
const busyRetry = time.Second

func (e *engine) run(ctx context.Context) {
	defer close(e.done)
	ticker := e.b.clock.NewTicker(e.b.opts.StatusInterval)
	defer ticker.Stop()
	var retry <-chan time.Time // set while a busy peer waits for another try
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.wrote:
		case <-retry:
		case <-ticker.C():
			st, err := e.b.syncStatus(ctx)
			e.setHealthy(err == nil && st.Initiates)
			continue
		}
		// Every peer the server knows. A failed session is the server's
		// to score and retry, except one it did not start because a
		// session with that peer ran already or the peer was over its
		// session rate: that one would leave the write behind until the
		// server's next interval.
		var reply events.SyncReply
		err := e.b.syncRequest(ctx, "", &reply)
		e.setHealthy(err == nil)
		retry = nil
		if err == nil && slices.ContainsFunc(reply.Sessions, func(r events.SyncReport) bool { return r.Reason == string(events.ReasonRateLimited) }) {
			retry = e.b.clock.After(busyRetry)
		}
	}
}

func (e *engine) setHealthy(ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.healthy = ok
}

// noteWrite asks a started engine for a sync soon; writes that come while
// one runs share the next.
func (e *engine) noteWrite() {
	e.mu.Lock()
	running := e.running
	e.mu.Unlock()
	if running {
		select {
		case e.wrote <- struct{}{}:
		default:
		}
	}
}

// Stop stops following the server; the server's own sync goes on.
func (e *engine) Stop() error {
	e.mu.Lock()
	if !e.running {
		e.mu.Unlock()
		return nil
	}
	e.running = false
	stop, done := e.stop, e.done
	e.mu.Unlock()
	stop()
	<-done
	return nil
}

// IsSyncing reports whether the engine is started and, at its last
// request, the service answered and initiated sessions for the authority.
func (e *engine) IsSyncing() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.running && e.healthy
}

// ForceSync runs one session with peer on the server now, whether or not
// the engine is started, and reports it. A failed session returns its
// reason code and the server's account of it.
func (e *engine) ForceSync(ctx context.Context, peer events.PeerID) (sdk.SyncResult, error) {
	if err := peer.Validate(); err != nil {
		return sdk.SyncResult{}, err
	}
	if peer == e.b.localPeer() {
		return sdk.SyncResult{}, events.Errorf(events.ReasonMalformed, "peer %s is this backend's own peer; sync with another", peer)
	}
	var reply events.SyncReply
	if err := e.b.syncRequest(ctx, peer, &reply); err != nil {
		return sdk.SyncResult{}, err
	}
	if len(reply.Sessions) != 1 || reply.Sessions[0].Peer != peer {
		return sdk.SyncResult{}, events.Errorf(events.ReasonInternal, "sync with %s: the server reported %d sessions, want one with that peer", peer, len(reply.Sessions))
	}
	rep := reply.Sessions[0]
	if rep.State != events.SessionCompleted {
		reason := events.Reason(rep.Reason)
		if reason == "" {
			reason = events.ReasonInternal
		}
		return sdk.SyncResult{}, events.Errorf(reason, "sync with peer %s %s: %s", peer, rep.State, rep.Error)
	}
	return sdk.SyncResult{
		Peer: peer, Sent: rep.Pushed, Received: rep.Pulled, Rounds: rep.Rounds,
		BytesSent: rep.BytesOut, BytesReceived: rep.BytesIn, Mode: rep.Mode,
	}, nil
}

// SubscribeCollections checks the names, then refuses: a peer reconciles
// whole authorities. Its index and sketch are kept per authority, and a
// session has no collection scope, so syncing part of one would take a
// per-collection index on every peer and a new session framing. A client
// that needs only some collections queries or observes those.
func (e *engine) SubscribeCollections(_ context.Context, collections ...string) error {
	for _, c := range collections {
		if err := events.CheckName("collection", c); err != nil {
			return err
		}
	}
	return events.Errorf(events.ReasonUnsupported,
		"the factsync peer syncs whole authorities (one index per authority; sessions have no collection scope); query or observe the collections you need instead")
}

// syncRequest asks the service for a session with peer (every present or
// static peer when empty), bounded by SyncTimeout unless ctx has a
// deadline. The guard waits up to events.LongRequestTimeout for a sync;
// past the caller's own bound the session is reported unavailable here
// while the server finishes it.
func (b *Backend) syncRequest(ctx context.Context, peer events.PeerID, reply *events.SyncReply) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.opts.SyncTimeout)
		defer cancel()
	}
	return b.call(ctx, events.AntiEntropyProto, events.AntiEntropyOpSync, events.SyncRequest{Peer: peer}, reply)
}

// syncStatus asks the service for its status for the authority, and
// learns this backend's peer from it.
func (b *Backend) syncStatus(ctx context.Context) (events.SyncStatus, error) {
	var st events.SyncStatus
	if err := b.call(ctx, events.AntiEntropyProto, events.AntiEntropyOpStatus, struct{}{}, &st); err != nil {
		return st, err
	}
	if st.Peer.Validate() == nil {
		b.learnPeer(st.Peer)
	}
	return st, nil
}
