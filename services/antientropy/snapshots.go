package antientropy

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Snapshots in a session (docs/snapshot.md, "Anti-entropy"). A peer that
// restored an authority from a snapshot, or pruned its history, has
// settled the facts before a cut otherwise than fact by fact: it may no
// longer hold them all. Its snapshot service says so (the floor). A
// session reconciles only facts at or after the later of the two peers'
// floors, on both sides, so neither asks for, offers or pushes facts
// before it. The responder also offers its newest committed snapshot; an
// initiator that needs the history before the floor (its own facts
// before the snapshot's cut are not the snapshot's, and the responder
// settled past its floor), or that is new (it holds no fact before the
// cut), restores from that snapshot through its own snapshot service and
// opens the session again: the snapshot is sent instead of the pruned
// facts. After a prune the snapshot service announces it, and the index
// of the authority is rebuilt from what JOURNAL still holds.

// SnapshotOffer is a responder's newest committed snapshot of the
// session's authority: its id and cut, and the fingerprint (hex) and count
// of every fact before the cut that its manifest states.
type SnapshotOffer struct {
	ID          string `json:"id"`
	Cut         uint32 `json:"cut"`
	Fingerprint string `json:"fingerprint"`
	Count       uint64 `json:"count"`
}

// floorFresh is how long a floor is used without asking again. A prune or
// a completed restore forgets it at once (watchSnapshots); a floor that
// is stale otherwise only has a session reconcile more than it must.
const floorFresh = 5 * time.Second

// cachedFloor is a floor and when it was read.
type cachedFloor struct {
	floor events.SnapshotFloor
	at    time.Time
}

// floor is what this peer's snapshots settle for auth, as its snapshot
// service said at most floorFresh ago: every session asks on both sides,
// and the request costs as much as the rest of an open.
func (s *Service) floor(ctx context.Context, auth events.AuthorityID) (events.SnapshotFloor, error) {
	now := s.env.Clock.Now()
	s.floorsMu.Lock()
	c, ok := s.floors[auth]
	s.floorsMu.Unlock()
	if ok && now.Sub(c.at) < floorFresh {
		return c.floor, nil
	}
	f, err := s.askFloor(ctx, auth)
	if err != nil {
		return f, err
	}
	s.floorsMu.Lock()
	s.floors[auth] = cachedFloor{floor: f, at: now}
	s.floorsMu.Unlock()
	return f, nil
}

// forgetFloor drops auth's cached floor.
func (s *Service) forgetFloor(auth events.AuthorityID) {
	s.floorsMu.Lock()
	delete(s.floors, auth)
	s.floorsMu.Unlock()
}

// askFloor asks this peer's snapshot service what its snapshots settle for
// auth. A peer that runs no snapshot service (nobody answers) has settled
// nothing that way and holds every fact it ever accepted.
func (s *Service) askFloor(ctx context.Context, auth events.AuthorityID) (events.SnapshotFloor, error) {
	var out events.SnapshotFloor
	m := nats.NewMsg(events.ServiceSubject(events.SnapshotProto, events.SnapshotOpFloor, auth))
	m.Data, _ = json.Marshal(events.SnapshotFloorRequest{Collection: "*"})
	bus.InjectTrace(ctx, m.Header)
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := s.env.Conn.RequestMsgWithContext(rctx, m)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return out, nil
	case err != nil:
		return out, events.Wrap(events.ReasonUnavailable, err, "ask the snapshot service for the settled cut")
	}
	if err := replyError(resp); err != nil {
		return out, err
	}
	if err := json.Unmarshal(resp.Data, &out); err != nil {
		return out, events.Wrap(events.ReasonMalformed, err, "decode the snapshot floor")
	}
	return out, nil
}

// replyError is the error an error reply carries, or nil.
func replyError(resp *nats.Msg) error {
	reason := resp.Header.Get(events.HeaderReason)
	if reason == "" {
		return nil
	}
	if e := events.DecodeError(resp.Data); e != nil {
		return e
	}
	return events.Errorf(events.Reason(reason), "%s", resp.Data)
}

// offerOf is the snapshot a floor offers to other peers, nil when none.
func offerOf(f events.SnapshotFloor) *SnapshotOffer {
	if f.Latest == "" {
		return nil
	}
	return &SnapshotOffer{ID: f.Latest, Cut: f.LatestCut, Fingerprint: f.LatestFingerprint, Count: f.LatestCount}
}

// restrict is the part of an index a session with floor reconciles.
func restrict(st negentropy.Storage, floor uint32) negentropy.Storage {
	if floor == 0 {
		return st
	}
	return negentropy.From(st, negentropy.Item{Timestamp: uint64(floor)})
}

// wantsSnapshot reports whether this peer, whose floor for the authority is
// local, should restore from the snapshot the responder offered before
// reconciling: the snapshot is past its floor, its facts before the cut
// are not the ones the snapshot states, and either the responder settled
// past this peer's floor (it cannot send what it no longer holds) or this
// peer holds nothing before the cut (a new peer starts from the snapshot).
func (s *Service) wantsSnapshot(set *factSet, local events.SnapshotFloor, open OpenReply) bool {
	o := open.Snapshot
	if s.cfg.NoBootstrap || o == nil || o.Cut <= local.SettledCut {
		return false
	}
	var fingerprint [negentropy.FingerprintSize]byte
	count := 0
	set.index.View(func(st negentropy.Storage) {
		count = st.LowerBound(negentropy.Item{Timestamp: uint64(o.Cut)})
		sum := st.Sum(0, count)
		fingerprint = sum.Fingerprint(uint64(count))
	})
	if uint64(count) == o.Count && hex.EncodeToString(fingerprint[:]) == o.Fingerprint {
		return false
	}
	return open.Floor > local.SettledCut || count == 0
}

// bootstrap has this peer's snapshot service restore the authority from
// the snapshot of the peer c talks to (through that peer's guard, with this
// peer's sync token) and waits until the restore completes or fails.
func (s *Service) bootstrap(ctx context.Context, c *remoteCall) error {
	progress := make(chan events.SnapshotProgress, 1)
	sub, err := s.env.Conn.Subscribe(events.SnapshotProgressSubject(c.auth), func(m *nats.Msg) {
		p, err := events.DecodeSnapshotProgress(m.Data)
		if err != nil || p.Phase != events.SnapshotPhaseComplete && p.Phase != events.SnapshotPhaseFailed {
			return
		}
		select {
		case progress <- p:
		default:
		}
	})
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "watch the restore")
	}
	defer func() { _ = sub.Unsubscribe() }()
	m := nats.NewMsg(events.ServiceSubject(events.SnapshotProto, events.SnapshotOpRestore, c.auth))
	m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(c.cred.Token))
	m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(c.cred.AuthorityKey))
	m.Header.Set(events.HeaderAuthority, string(c.auth))
	bus.InjectTrace(ctx, m.Header)
	m.Data, _ = json.Marshal(events.SnapshotRestoreRequest{Collection: "*", From: c.peer})
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	resp, err := s.env.Conn.RequestMsgWithContext(rctx, m)
	cancel()
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return events.Errorf(events.ReasonUnavailable, "peer %s offers a snapshot of %s, but no snapshot service runs here to restore it", c.peer, c.auth)
	case err != nil:
		return events.Wrap(events.ReasonUnavailable, err, "start the restore")
	}
	// A restore of the authority that runs already is as good as ours.
	if err := replyError(resp); err != nil && !events.IsReason(err, events.ReasonConflict) {
		return err
	}
	deadline := s.env.Clock.After(s.cfg.BootstrapTimeout)
	defer s.forgetFloor(c.auth)
	select {
	case p := <-progress:
		if p.Phase == events.SnapshotPhaseFailed {
			return events.Errorf(p.Reason, "restore from peer %s: %s", c.peer, p.Detail)
		}
		s.log.Info("antientropy: bootstrapped from a snapshot", "peer", c.peer, "authority", c.auth, "snapshot", p.Snapshot, "facts", p.Total)
		return nil
	case <-deadline:
		return events.Errorf(events.ReasonUnavailable, "the restore of %s from peer %s did not finish within %s", c.auth, c.peer, s.cfg.BootstrapTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// watchSnapshots follows this peer's snapshot service: a prune of an
// authority forgets its floor and rebuilds its index (one rebuild at a
// time), a completed restore forgets its floor.
func (s *Service) watchSnapshots(ctx context.Context) ([]*nats.Subscription, error) {
	pruned := make(chan events.AuthorityID, 64)
	onPrune, err := s.env.Conn.Subscribe(events.SnapshotPrunedSubject("*"), func(m *nats.Msg) {
		p, err := events.DecodeSnapshotPruned(m.Data)
		if err != nil {
			return
		}
		s.forgetFloor(p.Authority)
		select {
		case pruned <- p.Authority:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return nil, fmt.Errorf("antientropy: subscribe to prunes: %w", err)
	}
	onRestore, err := s.env.Conn.Subscribe(events.SnapshotProgressSubject("*"), func(m *nats.Msg) {
		if p, err := events.DecodeSnapshotProgress(m.Data); err == nil && p.Phase == events.SnapshotPhaseComplete {
			s.forgetFloor(p.Authority)
		}
	})
	if err != nil {
		_ = onPrune.Unsubscribe()
		return nil, fmt.Errorf("antientropy: subscribe to restores: %w", err)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case auth := <-pruned:
				if err := s.rebuild(ctx, auth); err != nil && ctx.Err() == nil {
					s.log.Warn("antientropy: rebuild the index after a prune", "authority", auth, "err", err)
				}
			}
		}
	}()
	return []*nats.Subscription{onPrune, onRestore}, nil
}

// rebuild replaces auth's index with one read from JOURNAL as it stands.
// While it reads, facts the follower indexes go into both, so none that
// arrives meanwhile is lost by the swap.
func (s *Service) rebuild(ctx context.Context, auth events.AuthorityID) error {
	next := s.newSet()
	s.mu.Lock()
	s.rebuilding[auth] = next
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.rebuilding, auth)
		s.mu.Unlock()
	}()
	err := bus.Scan(ctx, s.env.JS, events.StreamJournal, []string{events.JournalAuthorityFilter(auth)}, func(m jetstream.Msg) error {
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		if f, err := events.DecodeFact(m.Data()); err == nil && f.Authority == auth {
			next.insert(f, meta.Sequence.Stream)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.sets[auth] = next
	s.mu.Unlock()
	return nil
}
