package antientropy_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/services/antientropy/negentropy"
	"github.com/factsync/factsync/services/antientropy/riblt"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/runner"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

type peerStack struct {
	h    *bustest.Harness
	peer events.PeerID
}

// startPeer runs a guard and the anti-entropy responder on an embedded
// server, as one peer.
func startPeer(t *testing.T) peerStack {
	t.Helper()
	h := bustest.Start(t, bus.EmbeddedConfig{})
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	bustest.RunServices(t, runner.Config{
		Conn: h.Conn, DataRoot: t.TempDir(), Peer: events.PeerIDOf(pub), PeerKey: key,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, guard.New(guard.Config{}), antientropy.New(antientropy.Config{}))
	return peerStack{h: h, peer: events.PeerIDOf(pub)}
}

type device struct {
	authPub ed25519.PublicKey
	authKey ed25519.PrivateKey
	key     ed25519.PrivateKey
	token   []byte
}

func newDevice(t *testing.T, rights ...capability.Right) *device {
	t.Helper()
	authPub, authKey, _ := ed25519.GenerateKey(rand.Reader)
	devPub, devKey, _ := ed25519.GenerateKey(rand.Reader)
	token, err := capability.Mint(authKey, devPub, rights, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return &device{authPub: authPub, authKey: authKey, key: devKey, token: token}
}

func (d *device) auth() events.AuthorityID { return events.AuthorityIDOf(d.authPub) }

func (d *device) fact(t *testing.T, doc string, n int) *events.Fact {
	t.Helper()
	th, _ := hex.DecodeString(events.TokenHash(d.token))
	f, err := events.SignFact(d.key, &eventsv1.FactBody{
		AuthorityKey: d.authPub, TokenHash: th, Collection: "notes", Document: doc,
		Hlc: &eventsv1.HLC{WallMillis: uint64(time.Now().UnixMilli()), Logical: uint32(n)},
		Op:  &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: fmt.Appendf(nil, `{"n":%d}`, n)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// ingest publishes facts into the peer's INGRESS and waits until the guard
// has accepted them all into JOURNAL.
func (p peerStack) ingest(t *testing.T, d *device, facts ...*events.Fact) {
	t.Helper()
	batch := &eventsv1.FactBatch{Tokens: [][]byte{d.token}}
	for _, f := range facts {
		batch.Facts = append(batch.Facts, f.Proto())
	}
	b, _ := proto.Marshal(batch)
	ctx := context.Background()
	if _, err := p.h.JS.Publish(ctx, events.IngressFactSubject(d.auth()), b); err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, 30*time.Second, func() bool {
		st, err := p.h.JS.Stream(ctx, events.StreamJournal)
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(len(facts))+1
	}, "facts in JOURNAL")
}

// ask sends a peer request through the peer's guard, as another peer would.
func (p peerStack) ask(t *testing.T, d *device, token []byte, op string, body []byte, session ...string) *nats.Msg {
	t.Helper()
	m := nats.NewMsg(events.PeerSubject(p.peer, antientropy.Name, op))
	if len(session) > 0 {
		m.Header.Set(antientropy.HeaderSession, session[0])
	}
	m.Data = body
	m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(token))
	m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(d.authPub))
	m.Header.Set(events.HeaderAuthority, string(d.auth()))
	reply, err := p.h.Conn.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatalf("peer request %s: %v", op, err)
	}
	return reply
}

// startResponder starts a peer holding 40 facts of 7 documents, written
// by a device with write and sync rights.
func startResponder(t *testing.T) (peerStack, *device, []*events.Fact) {
	t.Helper()
	p := startPeer(t)
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	var facts []*events.Fact
	for i := range 40 {
		facts = append(facts, d.fact(t, fmt.Sprintf("d%d", i%7), i))
	}
	p.ingest(t, d, facts...)
	return p, d, facts
}

// A requester holding some of the responder's facts, and one of its own,
// reconciles through the responder's guard: it learns exactly what it
// lacks and what the responder lacks, and fetches the missing facts with
// their token.
func TestResponderReconcilesAndServesFacts(t *testing.T) {
	p, d, facts := startResponder(t)

	// The requester has every other fact, plus one the responder lacks.
	var local negentropy.Index
	var want []events.FactID
	for i, f := range facts {
		if i%2 == 0 {
			local.Insert(negentropy.Item{Timestamp: uint64(f.HLC.Seconds()), ID: f.ID})
		} else {
			want = append(want, f.ID)
		}
	}
	extra := d.fact(t, "local-only", 99)
	local.Insert(negentropy.Item{Timestamp: uint64(extra.HLC.Seconds()), ID: extra.ID})

	sortIDs := func(ids []events.FactID) { slices.SortFunc(ids, func(a, b events.FactID) int { return a.Compare(b) }) }
	sortIDs(want)
	// The responder indexes JOURNAL as it grows; reconcile until it has
	// caught up with what the guard accepted.
	var need, have []events.FactID
	session := p.open(t, d, antientropy.ModeNegentropy)
	bustest.Eventually(t, 30*time.Second, func() bool {
		have, need = reconcile(t, p, d, &local, session)
		sortIDs(need)
		return slices.Equal(need, want)
	}, "the requester to learn exactly the %d facts it lacks", len(want))
	if len(have) != 1 || have[0] != extra.ID {
		t.Fatalf("the requester learnt the responder lacks %v, want only %s", have, extra.ID)
	}

	ids := make([]string, len(need))
	for i, id := range need {
		ids[i] = id.String()
	}
	body, _ := json.Marshal(antientropy.FetchRequest{Session: session, IDs: ids})
	reply := p.ask(t, d, d.token, antientropy.OpFetch, body)
	if r := reply.Header.Get(events.HeaderReason); r != "" {
		t.Fatalf("fetch refused: %s: %s", r, reply.Data)
	}
	var batch eventsv1.FactBatch
	if err := proto.Unmarshal(reply.Data, &batch); err != nil {
		t.Fatal(err)
	}
	if len(batch.Tokens) != 1 || string(batch.Tokens[0]) != string(d.token) {
		t.Fatalf("fetch carried %d tokens, want the device's token once", len(batch.Tokens))
	}
	var got []events.FactID
	for _, sf := range batch.Facts {
		f, err := events.FactFromProto(sf)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.VerifySignature(); err != nil {
			t.Fatal(err)
		}
		got = append(got, f.ID)
	}
	sortIDs(got)
	if !slices.Equal(got, want) {
		t.Fatalf("fetch returned %d facts, want the %d asked for", len(got), len(want))
	}
}

// reconcile runs one negentropy session from local against the peer,
// through its guard, and returns what local has that the peer lacks and
// what local needs.
func reconcile(t *testing.T, p peerStack, d *device, local *negentropy.Index, session string) (have, need []events.FactID) {
	t.Helper()
	local.View(func(st negentropy.Storage) {
		in, err := negentropy.NewInitiator(st, 0)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := in.Initiate()
		for rounds := 0; err == nil && msg != nil; rounds++ {
			if rounds > 10 {
				t.Fatal("reconciliation did not finish in 10 rounds")
			}
			reply := p.ask(t, d, d.token, antientropy.OpReconcile, msg, session)
			if r := reply.Header.Get(events.HeaderReason); r != "" {
				t.Fatalf("reconcile refused: %s: %s", r, reply.Data)
			}
			var h, n []events.FactID
			msg, h, n, err = in.Reconcile(reply.Data)
			have, need = append(have, h...), append(need, n...)
		}
		if err != nil {
			t.Fatal(err)
		}
	})
	return have, need
}

// open starts a session in mode through the peer's guard.
func (p peerStack) open(t *testing.T, d *device, mode string) string {
	t.Helper()
	body, _ := json.Marshal(antientropy.OpenRequest{Modes: []string{mode}})
	reply := p.ask(t, d, d.token, antientropy.OpOpen, body)
	if r := reply.Header.Get(events.HeaderReason); r != "" {
		t.Fatalf("open refused: %s: %s", r, reply.Data)
	}
	var open antientropy.OpenReply
	if err := json.Unmarshal(reply.Data, &open); err != nil || open.Session == "" || open.Mode != mode {
		t.Fatalf("open reply %s: %v", reply.Data, err)
	}
	return open.Session
}

// A peer whose token lacks the sync right is refused by the guard with a
// reason before the responder sees anything: not even a fingerprint.
func TestResponderNeedsSyncRight(t *testing.T) {
	p := startPeer(t)
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpWrite}, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	p.ingest(t, d, d.fact(t, "a", 1))
	readOnly, err := capability.Mint(d.authKey, d.key.Public().(ed25519.PublicKey), []capability.Right{{Collection: capability.AnyCollection, Op: capability.OpRead}}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var local negentropy.Index
	var msg []byte
	local.View(func(st negentropy.Storage) {
		in, _ := negentropy.NewInitiator(st, 0)
		msg, _ = in.Initiate()
	})
	reply := p.ask(t, d, readOnly, antientropy.OpReconcile, msg)
	if r := reply.Header.Get(events.HeaderReason); r != string(events.ReasonNoRight) {
		t.Fatalf("reconcile without sync: reason %q (%q), want no_right", r, reply.Data)
	}
	if e := events.DecodeError(reply.Data); e == nil {
		t.Fatalf("the refusal is not an error body: %q", reply.Data)
	}
}

// A riblt session through the responder's guard: the symbols decode to
// the prefixes of the difference, a fetch by prefix returns the facts
// behind them, and those facts confirm against the fingerprint sent at
// open, while a resolution that misses one does not.
func TestRIBLTSessionFetchesByPrefix(t *testing.T) {
	p, d, facts := startResponder(t)

	// The requester has every other fact, plus one the responder lacks.
	local := riblt.NewSketch(riblt.DefaultSketchSize)
	var want []riblt.Prefix
	for i, f := range facts {
		if i%2 == 0 {
			local.Add(f.ID)
		} else {
			want = append(want, riblt.PrefixOf(f.ID))
		}
	}
	own := d.fact(t, "local-only", 99)
	local.Add(own.ID)
	sortPrefixes := func(ps []riblt.Prefix) []riblt.Prefix {
		ps = slices.Clone(ps)
		slices.SortFunc(ps, func(a, b riblt.Prefix) int { return bytes.Compare(a[:], b[:]) })
		return ps
	}
	want = sortPrefixes(want)

	// The responder indexes JOURNAL as it grows; open sessions until its
	// sketch codes everything the guard accepted.
	var dec *riblt.Decoder
	var open antientropy.OpenReply
	bustest.Eventually(t, 30*time.Second, func() bool {
		body, _ := json.Marshal(antientropy.OpenRequest{Modes: []string{antientropy.ModeRIBLT, antientropy.ModeNegentropy}})
		reply := p.ask(t, d, d.token, antientropy.OpOpen, body)
		open = antientropy.OpenReply{}
		if err := json.Unmarshal(reply.Data, &open); err != nil || open.Mode != antientropy.ModeRIBLT || open.RIBLTFingerprint == nil {
			t.Fatalf("open reply %s: %v; want mode %s with a fingerprint", reply.Data, err, antientropy.ModeRIBLT)
		}
		dec = riblt.NewDecoder(local.Clone())
		for n := dec.NextBatch(); n > 0; n = dec.NextBatch() {
			body, _ := json.Marshal(antientropy.SymbolsRequest{Session: open.Session, From: dec.Received(), Count: n})
			reply := p.ask(t, d, d.token, antientropy.OpSymbols, body)
			if len(reply.Data) != n*riblt.SymbolSize {
				t.Fatalf("asked for %d symbols, got %d bytes: %s", n, len(reply.Data), reply.Data)
			}
			if err := dec.AddSymbols(reply.Data); err != nil {
				t.Fatal(err)
			}
		}
		return slices.Equal(sortPrefixes(dec.Remote()), want)
	}, "the requester to decode the prefixes of the %d facts it lacks", len(want))
	if l := dec.Local(); len(l) != 1 || l[0] != riblt.PrefixOf(own.ID) {
		t.Fatalf("decoded %v as the responder's lack, want only %s", l, riblt.PrefixOf(own.ID))
	}

	fetch := func(req antientropy.FetchRequest) ([]events.FactID, *nats.Msg) {
		t.Helper()
		req.Session = open.Session
		body, _ := json.Marshal(req)
		reply := p.ask(t, d, d.token, antientropy.OpFetch, body)
		if reply.Header.Get(events.HeaderReason) != "" {
			return nil, reply
		}
		var batch eventsv1.FactBatch
		if err := proto.Unmarshal(reply.Data, &batch); err != nil {
			t.Fatal(err)
		}
		var ids []events.FactID
		for _, sf := range batch.Facts {
			f, err := events.FactFromProto(sf)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, f.ID)
		}
		return ids, reply
	}
	var asked []string
	for _, prefix := range dec.Remote() {
		asked = append(asked, prefix.String())
	}
	fetched, reply := fetch(antientropy.FetchRequest{Prefixes: asked})
	if reply.Header.Get(events.HeaderReason) != "" || len(fetched) != len(want) {
		t.Fatalf("fetch by %d prefixes returned %d facts (%s), want %d", len(asked), len(fetched), reply.Data, len(want))
	}
	if err := dec.Confirm(*open.RIBLTFingerprint, fetched, []events.FactID{own.ID}); err != nil {
		t.Fatalf("the facts behind the prefixes do not confirm: %v", err)
	}
	if err := dec.Confirm(*open.RIBLTFingerprint, fetched[1:], []events.FactID{own.ID}); !events.IsReason(err, events.ReasonConflict) {
		t.Fatalf("a resolution missing a fact: err %v, want conflict", err)
	}

	// A prefix may name no fact; an id must name one.
	var unknown events.FactID
	unknown[0] = 0xff
	if ids, reply := fetch(antientropy.FetchRequest{Prefixes: []string{riblt.PrefixOf(unknown).String()}}); len(ids) != 0 || reply.Header.Get(events.HeaderReason) != "" {
		t.Fatalf("fetch by an unknown prefix: %d facts, reason %q; want none and no error", len(ids), reply.Header.Get(events.HeaderReason))
	}
	if _, reply := fetch(antientropy.FetchRequest{IDs: []string{unknown.String()}}); reply.Header.Get(events.HeaderReason) != string(events.ReasonNotFound) {
		t.Fatalf("fetch by an unknown id: reason %q, want not_found", reply.Header.Get(events.HeaderReason))
	}
	if _, reply := fetch(antientropy.FetchRequest{Prefixes: []string{"abc"}}); reply.Header.Get(events.HeaderReason) != string(events.ReasonMalformed) {
		t.Fatalf("fetch by a malformed prefix: reason %q, want malformed", reply.Header.Get(events.HeaderReason))
	}
}

// A peer of the first riblt version offers "riblt", whose 36-byte
// symbols code whole ids: this peer does not take it for its own mode, so
// the two reconcile with negentropy, or not at all.
func TestFirstRIBLTVersionIsNotSpoken(t *testing.T) {
	p := startPeer(t)
	d := newDevice(t, capability.Right{Collection: capability.AnyCollection, Op: capability.OpSync})
	for _, c := range []struct {
		modes      []string
		mode       string
		wantReason events.Reason
	}{
		{[]string{"riblt", antientropy.ModeNegentropy}, antientropy.ModeNegentropy, ""},
		{[]string{"riblt"}, "", events.ReasonUnsupported},
	} {
		body, _ := json.Marshal(antientropy.OpenRequest{Modes: c.modes})
		reply := p.ask(t, d, d.token, antientropy.OpOpen, body)
		if r := events.Reason(reply.Header.Get(events.HeaderReason)); r != c.wantReason {
			t.Fatalf("open %v: reason %q (%s), want %q", c.modes, r, reply.Data, c.wantReason)
		}
		var open antientropy.OpenReply
		if c.wantReason == "" && (json.Unmarshal(reply.Data, &open) != nil || open.Mode != c.mode || open.RIBLTFingerprint != nil) {
			t.Fatalf("open %v: reply %s, want mode %s", c.modes, reply.Data, c.mode)
		}
	}
}
