package snapshot

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/clock"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Source is where a restore fetches snapshots from: another peer's
// snapshot service, reached through that peer's guard.
type Source interface {
	// List returns the authority's committed snapshots, newest first.
	List(ctx context.Context, auth events.AuthorityID) ([]events.SnapshotInfo, error)
	// Fetch returns one chunk of a snapshot's content.
	Fetch(ctx context.Context, auth events.AuthorityID, id string, offset, limit int64) (events.SnapshotFetchReply, error)
}

// Credentials are what a request through a guard carries: a token that
// grants `snapshot` on the authority, and the authority's public key.
type Credentials struct {
	Token        []byte
	AuthorityKey ed25519.PublicKey
}

// Header returns the request headers that carry c.
func (c Credentials) Header(auth events.AuthorityID) nats.Header {
	h := nats.Header{}
	h.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(c.Token))
	h.Set(events.HeaderAuthorityKey, hex.EncodeToString(c.AuthorityKey))
	h.Set(events.HeaderAuthority, string(auth))
	return h
}

// PeerSource reaches the snapshot service of peer through its guard
// (events.PeerSubject). With Peer empty it sends client requests
// (events.APISubject) to the guard of the stack Conn is connected to.
type PeerSource struct {
	Conn        *nats.Conn
	Peer        events.PeerID
	Credentials Credentials
	Timeout     time.Duration // per request; default 10s
}

// List implements Source.
func (p PeerSource) List(ctx context.Context, auth events.AuthorityID) ([]events.SnapshotInfo, error) {
	var reply events.SnapshotListReply
	err := p.request(ctx, auth, events.SnapshotOpList, events.SnapshotListRequest{Collection: "*", CommittedOnly: true}, &reply)
	return reply.Snapshots, err
}

// Fetch implements Source.
func (p PeerSource) Fetch(ctx context.Context, auth events.AuthorityID, id string, offset, limit int64) (events.SnapshotFetchReply, error) {
	var reply events.SnapshotFetchReply
	err := p.request(ctx, auth, events.SnapshotOpFetch, events.SnapshotFetchRequest{Collection: "*", ID: id, Offset: offset, Limit: limit}, &reply)
	return reply, err
}

// Approve asks peer to approve a manifest; it is the default Asker.
func (p PeerSource) Approve(ctx context.Context, auth events.AuthorityID, manifest []byte) (events.SnapshotSignature, error) {
	var reply events.SnapshotApproveReply
	err := p.request(ctx, auth, events.SnapshotOpApprove, events.SnapshotApproveRequest{Collection: "*", Manifest: manifest}, &reply)
	return reply.Signature, err
}

func (p PeerSource) request(ctx context.Context, auth events.AuthorityID, op string, body, reply any) error {
	timeout := p.Timeout
	switch {
	case timeout > 0:
	case events.LongRequest(events.SnapshotProto, op):
		timeout = events.LongRequestTimeout // an approver builds the snapshot too
	default:
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	subject := events.APISubject(events.SnapshotProto, op, auth)
	if p.Peer != "" {
		subject = events.PeerSubject(p.Peer, events.SnapshotProto, op)
	}
	m := nats.NewMsg(subject)
	m.Header = p.Credentials.Header(auth)
	if p.Peer != "" {
		events.SetProtocolVersion(m.Header)
	}
	bus.InjectTrace(ctx, m.Header)
	m.Data, _ = json.Marshal(body)
	resp, err := p.Conn.RequestMsgWithContext(ctx, m)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return events.Errorf(events.ReasonUnavailable, "nobody answers %s", subject)
	case err != nil:
		return events.Wrap(events.ReasonUnavailable, err, "request "+subject)
	}
	if resp.Header.Get(events.HeaderReason) != "" {
		if e := events.DecodeError(resp.Data); e != nil {
			return e
		}
		return events.Errorf(events.Reason(resp.Header.Get(events.HeaderReason)), "%s", resp.Data)
	}
	if err := json.Unmarshal(resp.Data, reply); err != nil {
		return events.Wrap(events.ReasonMalformed, err, "decode the "+op+" reply")
	}
	return nil
}

// RestoreBucket holds one restore marker per authority.
func RestoreBucket() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      events.SnapshotRestoreBucket,
		Description: "snapshot restore markers, one per authority",
		Storage:     jetstream.FileStorage,
		History:     1,
	}
}

// ReadRestoreMarker returns auth's restore marker; ok is false when the
// authority was never restored from a snapshot. Anti-entropy reads it: with
// a complete marker the range before CutSeconds is settled by the snapshot
// and only the range after it needs reconciling; with a loading marker the
// restore is unfinished and nothing before the cut may be trusted as whole.
func ReadRestoreMarker(ctx context.Context, kv jetstream.KeyValue, auth events.AuthorityID) (events.SnapshotRestoreMarker, bool, error) {
	var m events.SnapshotRestoreMarker
	e, err := kv.Get(ctx, string(auth))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return m, false, nil
	}
	if err != nil {
		return m, false, events.Wrap(events.ReasonUnavailable, err, "read the restore marker")
	}
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return m, false, events.Wrap(events.ReasonInternal, err, "decode the restore marker")
	}
	return m, true, nil
}

// Restorer bootstraps authorities of this peer from snapshots.
type Restorer struct {
	JS      jetstream.JetStream
	Markers jetstream.KeyValue // RestoreBucket
	Clock   clock.Clock
	// Policy is who must have signed the snapshots of an authority.
	Policy func(events.AuthorityID) Policy
	// Settled, when set, returns the cut this peer pruned an authority to:
	// a snapshot at or before it would bring pruned facts back.
	Settled func(context.Context, events.AuthorityID) (uint32, error)
	// Progress, when set, receives every progress report.
	Progress func(events.SnapshotProgress)
	// CheckSignatures, when set, checks the device signatures of a
	// snapshot's facts before anything is loaded, in place of checking
	// them here: the service has the local guard do it (guardVerify), which
	// remembers them, so the guard that loads the facts does not verify
	// each signature a second time.
	CheckSignatures func(context.Context, events.AuthorityID, []*events.Fact) error
	// Loaded, when set, runs once JOURNAL holds every fact of the
	// snapshot, before the restore is marked complete, so a restore cut
	// short before it ran runs it again when it resumes. held is the id
	// sum and count of the facts JOURNAL holds before the cut.
	Loaded func(ctx context.Context, auth events.AuthorityID, v *Verified, held idSum) error
	// SettleTimeout bounds the wait for the guard to accept every loaded
	// fact; default 2 minutes.
	SettleTimeout time.Duration
	// MaxContentBytes bounds the content of a snapshot this peer restores;
	// default DefaultMaxContentBytes.
	MaxContentBytes int64
	// BatchFacts is the most facts per INGRESS batch; default and maximum
	// events.MaxBatchFacts.
	BatchFacts int
	// afterBatch is a test hook: it runs after batch i is in INGRESS and
	// may cancel the restore to simulate a crash.
	afterBatch func(i int)
}

// fetchChunk is the content read per fetch request: its JSON (base64)
// form stays well under NATS's default 1 MB payload.
const fetchChunk = 512 << 10

// maxLoadBytes bounds one INGRESS batch, under events.MaxIngressMessage.
const maxLoadBytes = events.MaxIngressMessage - 64<<10

// Restore fetches auth's latest committed snapshot from src, verifies it,
// and loads its facts into local INGRESS as fact batches, so the local guard
// checks every one again. A restore marker records the progress: it says
// "loading" from before the first batch until JOURNAL holds every fact of
// the snapshot, and only then "complete". A restore cut short resumes from
// the marker (the same snapshot: from the last batch published; a newer
// snapshot: from the start), and batches sent twice are dropped by
// INGRESS's and JOURNAL's deduplication. It returns the verified snapshot.
func (r *Restorer) Restore(ctx context.Context, src Source, auth events.AuthorityID) (*Verified, error) {
	list, err := src.List(ctx, auth)
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, events.Errorf(events.ReasonNotFound, "the source has no committed snapshot of authority %s", auth)
	}
	info := list[0]
	marker, found, err := ReadRestoreMarker(ctx, r.Markers, auth)
	if err != nil {
		return nil, err
	}
	if found && marker.State == events.SnapshotPhaseComplete && marker.CutSeconds >= info.CutSeconds {
		return nil, events.Errorf(events.ReasonConflict, "authority %s is restored already, to cut %d (the source's latest is %d)", auth, marker.CutSeconds, info.CutSeconds)
	}
	if r.Settled != nil {
		pruned, err := r.Settled(ctx, auth)
		if err != nil {
			return nil, err
		}
		if pruned >= info.CutSeconds {
			return nil, events.Errorf(events.ReasonConflict, "this peer pruned authority %s to cut %d already (the source's latest is %d)", auth, pruned, info.CutSeconds)
		}
	}
	report := func(phase events.SnapshotPhase, done, total int64) {
		if r.Progress != nil {
			r.Progress(events.SnapshotProgress{Authority: auth, Snapshot: info.ID, Phase: phase, Done: done, Total: total})
		}
	}

	if err := r.checkListed(auth, info); err != nil {
		return nil, err
	}
	content, err := fetchContent(ctx, src, auth, info, func(done int64) { report(events.SnapshotPhaseFetching, done, info.ContentSize) })
	if err != nil {
		return nil, err
	}
	report(events.SnapshotPhaseVerifying, 0, 1)
	checkSignatures := verifySignatures
	if r.CheckSignatures != nil {
		checkSignatures = func(facts []*events.Fact) error { return r.CheckSignatures(ctx, auth, facts) }
	}
	v, err := verify(auth, info.Manifest, info.Signatures, content, r.Policy(auth), checkSignatures)
	if err != nil {
		return nil, err
	}

	batches := loadBatches(v.Content, r.BatchFacts)
	start := 0
	if found && marker.State == events.SnapshotPhaseLoading && marker.Snapshot == v.ID {
		start = min(marker.Published, len(batches))
	}
	marker = events.SnapshotRestoreMarker{Snapshot: v.ID, CutSeconds: v.Manifest.Cut, State: events.SnapshotPhaseLoading, Batches: len(batches), Published: start}
	if err := r.mark(ctx, auth, &marker); err != nil {
		return nil, err
	}
	total := int64(len(v.Content.Facts))
	loaded := int64(0)
	for _, b := range batches[:start] {
		loaded += int64(len(b.GetFacts()))
	}
	// Up to loadWindow batches travel at once, so the guard always has
	// the next one; the marker counts the leading batches INGRESS acked.
	var inflight []jetstream.PubAckFuture
	acked := func() error {
		f := inflight[0]
		inflight = inflight[1:]
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("load batch %d of the snapshot into INGRESS", marker.Published))
		case <-ctx.Done():
			return ctx.Err()
		}
		i := marker.Published
		loaded += int64(len(batches[i].GetFacts()))
		marker.Published = i + 1
		if err := r.mark(ctx, auth, &marker); err != nil {
			return err
		}
		report(events.SnapshotPhaseLoading, loaded, total)
		if r.afterBatch != nil {
			r.afterBatch(i)
		}
		return nil
	}
	for i := start; i < len(batches); i++ {
		f, err := r.publish(ctx, auth, v.ID, i, batches[i])
		if err != nil {
			return nil, err
		}
		inflight = append(inflight, f)
		if len(inflight) == loadWindow {
			if err := acked(); err != nil {
				return nil, err
			}
		}
	}
	for len(inflight) > 0 {
		if err := acked(); err != nil {
			return nil, err
		}
	}
	held, err := r.settle(ctx, auth, v, func(done int64) { report(events.SnapshotPhaseSettling, done, total) })
	if err != nil {
		return nil, err
	}
	if r.Loaded != nil {
		if err := r.Loaded(ctx, auth, v, held); err != nil {
			return nil, err
		}
	}
	marker.State = events.SnapshotPhaseComplete
	if err := r.mark(ctx, auth, &marker); err != nil {
		return nil, err
	}
	report(events.SnapshotPhaseComplete, total, total)
	return v, nil
}

// DefaultMaxContentBytes bounds the content a restore fetches when
// Restorer.MaxContentBytes is 0: 1,000,000 live facts make about 36 MB.
const DefaultMaxContentBytes = 4 << 30

// checkListed checks what the source lists before anything is fetched:
// the restore allocates the content's size up front, so only a manifest
// that enough trusted peers signed, naming that size, and a size within
// MaxContentBytes, may make it. A source cannot make this peer allocate
// what it likes.
func (r *Restorer) checkListed(auth events.AuthorityID, info events.SnapshotInfo) error {
	m, err := DecodeManifest(info.Manifest)
	if err != nil {
		return err
	}
	if m.Authority() != auth {
		return events.Errorf(events.ReasonTampered, "the source lists a snapshot of authority %s as one of %s", m.Authority(), auth)
	}
	if err := r.Policy(auth).CheckThreshold(info.Manifest, info.Signatures); err != nil {
		return err
	}
	if info.ContentSize < 0 || uint64(info.ContentSize) != m.ContentSize {
		return events.Errorf(events.ReasonTampered, "the source lists snapshot %s as %d bytes; its manifest says %d", shortID(info.ID), info.ContentSize, m.ContentSize)
	}
	limit := r.MaxContentBytes
	if limit <= 0 {
		limit = DefaultMaxContentBytes
	}
	if m.ContentSize > uint64(limit) {
		return events.Errorf(events.ReasonTooLarge, "snapshot %s is %d bytes, over this peer's restore limit of %d", shortID(info.ID), m.ContentSize, limit)
	}
	return nil
}

// fetchWindow is how many chunk requests a restore has in flight: each
// crosses the mesh and the source's guard, so one at a time spends most
// of a large fetch waiting on round trips.
const fetchWindow = 4

// fetchContent fetches a snapshot's content in chunks, fetchWindow at a
// time, each into its place; a chunk served short is asked for again from
// where it stopped. It reports the bytes fetched after each chunk.
func fetchContent(ctx context.Context, src Source, auth events.AuthorityID, info events.SnapshotInfo, progress func(done int64)) ([]byte, error) {
	content := make([]byte, info.ContentSize) // checkListed bounded it
	var mu sync.Mutex
	fetched := int64(0)
	chunks := int((info.ContentSize + fetchChunk - 1) / fetchChunk)
	err := inWindow(ctx, chunks, fetchWindow, func(ctx context.Context, i int) error {
		from := int64(i) * fetchChunk
		end := min(from+fetchChunk, info.ContentSize)
		for at := from; at < end; {
			chunk, err := src.Fetch(ctx, auth, info.ID, at, end-at)
			if err != nil {
				return err
			}
			if len(chunk.Data) == 0 || int64(len(chunk.Data)) > end-at || chunk.Size != info.ContentSize {
				return events.Errorf(events.ReasonTampered, "the source served %d bytes at offset %d of a %d-byte snapshot that should be %d bytes", len(chunk.Data), at, chunk.Size, info.ContentSize)
			}
			at += int64(copy(content[at:end], chunk.Data))
		}
		mu.Lock()
		defer mu.Unlock()
		fetched += end - from
		progress(fetched)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return content, nil
}

// inWindow runs do(i) for i in [0, n), at most window at once, and
// returns the first error; an error cancels the context the calls still
// running were given.
func inWindow(ctx context.Context, n, window int, do func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
		slots = make(chan struct{}, window)
	)
start:
	for i := range n {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			break start
		}
		wg.Go(func() {
			defer func() { <-slots }()
			if err := do(ctx, i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				cancel()
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// loadBatches splits the content's facts into INGRESS batches, each with
// the tokens its facts cite, under the batch limits.
func loadBatches(c *Content, maxFacts int) []*eventsv1.FactBatch {
	if maxFacts <= 0 || maxFacts > events.MaxBatchFacts {
		maxFacts = events.MaxBatchFacts
	}
	tokens := make(map[string][]byte, len(c.Tokens))
	for _, t := range c.Tokens {
		tokens[events.TokenHash(t)] = t
	}
	var out []*eventsv1.FactBatch
	var cur *eventsv1.FactBatch
	size := 0
	cited := map[string]bool{}
	for _, f := range c.Facts {
		h := f.TokenHash()
		add := len(f.Body) + len(f.Signature) + 16
		if !cited[h] {
			add += len(tokens[h]) + 8
		}
		if cur == nil || len(cur.Facts) == maxFacts || size+add > maxLoadBytes {
			cur, size, cited = &eventsv1.FactBatch{}, 0, map[string]bool{}
			out = append(out, cur)
			add = len(f.Body) + len(f.Signature) + 16 + len(tokens[h]) + 8
		}
		if !cited[h] {
			cited[h] = true
			cur.Tokens = append(cur.Tokens, tokens[h])
		}
		cur.Facts = append(cur.Facts, f.Proto())
		size += add
	}
	return out
}

// loadWindow is how many INGRESS batches a restore has in flight.
const loadWindow = 4

// publish sends batch i of snapshot id to INGRESS without waiting for the
// ack, named so that a repeat within INGRESS's duplicate window is dropped.
func (r *Restorer) publish(ctx context.Context, auth events.AuthorityID, id string, i int, b *eventsv1.FactBatch) (jetstream.PubAckFuture, error) {
	m := nats.NewMsg(events.IngressFactSubject(auth))
	m.Header.Set(events.HeaderMsgID, fmt.Sprintf("snapshot:%s:%d", id, i))
	bus.InjectTrace(ctx, m.Header)
	m.Data, _ = proto.Marshal(b)
	f, err := r.JS.PublishMsgAsync(m)
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, fmt.Sprintf("load batch %d of the snapshot into INGRESS", i))
	}
	return f, nil
}

// settle waits until JOURNAL holds every fact of the snapshot: only the
// guard's acceptance makes the restore complete. A fact the guard refuses
// (a revoked or expired token, a closed registration) never arrives, and
// the restore fails after SettleTimeout with the marker still "loading".
// It reads the authority's JOURNAL to its end and returns the id sum and
// count of the distinct facts it holds before the cut: the snapshot's and
// any this peer had (see Loaded).
func (r *Restorer) settle(ctx context.Context, auth events.AuthorityID, v *Verified, progress func(int64)) (idSum, error) {
	inSnapshot := make(map[events.FactID]bool, len(v.Content.Facts))
	for _, f := range v.Content.Facts {
		inSnapshot[f.ID] = true
	}
	timeout := r.SettleTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	deadline := r.Clock.After(timeout)
	cons, err := r.JS.OrderedConsumer(ctx, events.StreamJournal, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.JournalAuthorityFilter(auth)},
	})
	if err != nil {
		return idSum{}, events.Wrap(events.ReasonUnavailable, err, "watch JOURNAL")
	}
	// The server keeps an ordered consumer for minutes after its reader
	// stops; this one is done with when the restore settles.
	defer func() {
		_ = r.JS.DeleteConsumer(context.WithoutCancel(ctx), events.StreamJournal, cons.CachedInfo().Name)
	}()
	it, err := cons.Messages()
	if err != nil {
		return idSum{}, events.Wrap(events.ReasonUnavailable, err, "watch JOURNAL")
	}
	defer it.Stop()
	// held is one JOURNAL message's fact: its id, whether it is before
	// the cut, and how many messages were still to come after it.
	type held struct {
		id      events.FactID
		before  bool
		pending uint64
	}
	cut := v.Manifest.Cut
	arrived := make(chan held, 256)
	go func() {
		defer close(arrived)
		for {
			m, err := it.Next()
			if err != nil {
				return
			}
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			// The guard names each fact's message by its id; only a
			// message named otherwise (a prune's copy), or a fact the
			// snapshot does not hold, is decoded.
			h := held{pending: meta.NumPending}
			if id, err := events.ParseFactID(m.Headers().Get(events.HeaderMsgID)); err == nil && inSnapshot[id] {
				h.id, h.before = id, true
			} else if f, err := events.DecodeFact(m.Data()); err == nil {
				h.id, h.before = f.ID, BeforeCut(f, cut)
			} else {
				continue
			}
			arrived <- h
		}
	}()
	defer func() {
		it.Stop()
		for range arrived {
		}
	}()
	var (
		before  idSum
		counted = map[events.FactID]bool{}
		found   = 0
		atEnd   = false
	)
	for found < len(inSnapshot) || !atEnd {
		select {
		case h, ok := <-arrived:
			if !ok {
				return idSum{}, events.Errorf(events.ReasonUnavailable, "JOURNAL watch ended with %d facts of the snapshot missing", len(inSnapshot)-found)
			}
			atEnd = h.pending == 0
			if !h.before || counted[h.id] {
				continue
			}
			counted[h.id] = true
			before.Sum.Add(&h.id)
			before.Count++
			if inSnapshot[h.id] {
				found++
				if found%1000 == 0 || found == len(inSnapshot) {
					progress(int64(found))
				}
			}
		case <-deadline:
			return idSum{}, events.Errorf(events.ReasonUnavailable, "the guard accepted %d of the snapshot's %d facts within %s; see DENIED for the others (the restore stays marked loading)", found, len(inSnapshot), timeout)
		case <-ctx.Done():
			return idSum{}, ctx.Err()
		}
	}
	return before, nil
}

func (r *Restorer) mark(ctx context.Context, auth events.AuthorityID, m *events.SnapshotRestoreMarker) error {
	m.UpdatedAt = r.Clock.Now().UTC()
	b, _ := json.Marshal(m)
	if _, err := r.Markers.Put(ctx, string(auth), b); err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "write the restore marker")
	}
	return nil
}

// verifyWindow is how many batches a restore has its guard verify at
// once: the guard verifies each on every core, and the next batch is
// encoded, sent and decoded meanwhile.
const verifyWindow = 2

// guardVerify has the local guard check the facts' device signatures, in
// batches under the message size limits, verifyWindow at a time; a fact
// that fails is reported with the guard's reason. Without a guard to ask
// it checks them here.
func (s *Service) guardVerify(ctx context.Context, auth events.AuthorityID, facts []*events.Fact) error {
	var batches [][]*events.Fact
	for from := 0; from < len(facts); {
		to, size := from, 0
		for to < min(from+events.MaxBatchFacts, len(facts)) {
			n := len(facts[to].Body) + len(facts[to].Signature) + 16
			if size+n > maxLoadBytes && to > from {
				break
			}
			size += n
			to++
		}
		batches = append(batches, facts[from:to])
		from = to
	}
	return inWindow(ctx, len(batches), verifyWindow, func(ctx context.Context, i int) error {
		return s.guardVerifyBatch(ctx, auth, batches[i])
	})
}

// guardVerifyBatch has the local guard check one batch of signatures.
func (s *Service) guardVerifyBatch(ctx context.Context, auth events.AuthorityID, facts []*events.Fact) error {
	batch := &eventsv1.FactBatch{Facts: make([]*eventsv1.SignedFact, len(facts))}
	for i, f := range facts {
		batch.Facts[i] = f.Proto()
	}
	m := nats.NewMsg(events.ServiceSubject(events.GuardProto, events.GuardOpVerify, auth))
	bus.InjectTrace(ctx, m.Header)
	m.Data, _ = proto.Marshal(batch)
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := s.env.Conn.RequestMsgWithContext(rctx, m)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return verifySignatures(facts)
	case err != nil:
		return events.Wrap(events.ReasonUnavailable, err, "have the guard check the snapshot's signatures")
	}
	if resp.Header.Get(events.HeaderReason) != "" {
		if e := events.DecodeError(resp.Data); e != nil {
			return e
		}
		return events.Errorf(events.Reason(resp.Header.Get(events.HeaderReason)), "%s", resp.Data)
	}
	return nil
}
