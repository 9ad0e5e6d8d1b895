// Package stack starts what the faults tests attack: an embedded
// nats-server with factsync's role users (shared/natsauth), and the guard
// and the journal on their own role connections through shared/runner,
// as `factsync serve guard journal` runs them. It also makes devices with
// tokens and signed facts.
package stack

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/bustest"
	"github.com/factsync/factsync/shared/capability"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/factsync/factsync/shared/runner"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Users are the role users of a stack; every password is "<role>-secret".
var Users = map[natsauth.Role]natsauth.User{}

func init() {
	for _, r := range []natsauth.Role{natsauth.RoleGuard, natsauth.RoleServices, natsauth.RoleClient, natsauth.RolePeer} {
		Users[r] = natsauth.User{Name: string(r), Password: string(r) + "-secret", Role: r}
	}
}

// Stack is a running server with the guard and the journal.
type Stack struct {
	// Server is the embedded server Start runs; nil when the stack runs
	// against servers of its caller (StartServices).
	Server *server.Server
	// URL is the servers' client URL, a comma-separated list for a
	// cluster.
	URL string
	// Ops is a guard-role connection for inspecting streams.
	Ops   *nats.Conn
	OpsJS jetstream.JetStream
	Peer  events.PeerID
	// Runner runs the guard and the journal; its Status shows a service
	// that failed or panicked.
	Runner *runner.Runner
}

// Start runs the stack for the duration of the test, with the guard
// configured by cfg. extra are more users (scoped clients and peers) for
// ConnectAs.
func Start(t testing.TB, cfg guard.Config, extra ...natsauth.User) *Stack {
	t.Helper()
	configure, err := natsauth.Apply(append(RoleUsers(), extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1, LazySync: true, Configure: configure})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	s := StartServices(t, ns.ClientURL(), 1, cfg)
	s.Server = ns
	return s
}

// RoleUsers are the users of Users, for natsauth.Apply.
func RoleUsers() []natsauth.User {
	all := make([]natsauth.User, 0, len(Users))
	for _, u := range Users {
		all = append(all, u)
	}
	return all
}

// StartServices runs the guard and the journal for the duration of the
// test against the servers at url, which know the users of Users, with
// streams of the given replicas (3 on a JetStream cluster).
func StartServices(t testing.TB, url string, replicas int, cfg guard.Config) *Stack {
	t.Helper()
	s := &Stack{URL: url}
	guardConn := s.Connect(t, natsauth.RoleGuard)
	servicesConn := s.Connect(t, natsauth.RoleServices)
	s.Ops = s.Connect(t, natsauth.RoleGuard)
	var err error
	if s.OpsJS, err = jetstream.New(s.Ops); err != nil {
		t.Fatal(err)
	}
	peerPub, peerKey, _ := ed25519.GenerateKey(rand.Reader)
	s.Peer = events.PeerIDOf(peerPub)
	r := bustest.RunServices(t, runner.Config{
		Conn:           servicesConn,
		ServiceConns:   map[string]*nats.Conn{guard.Name: guardConn},
		StreamReplicas: replicas,
		DataRoot:       t.TempDir(),
		Peer:           s.Peer,
		PeerKey:        peerKey,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, guard.New(cfg), journal.New(journal.Config{}))
	s.Runner = r
	return s
}

// Conn is a connection with the server's permission errors collected.
type Conn struct {
	*bustest.Watched
	JS jetstream.JetStream
}

// Connect opens a connection as role's user.
func (s *Stack) Connect(t testing.TB, role natsauth.Role) *nats.Conn {
	return s.ConnectWatched(t, role).Conn
}

// ConnectWatched opens a connection as role's user that records the
// asynchronous errors the server sends (permission violations).
func (s *Stack) ConnectWatched(t testing.TB, role natsauth.Role) *Conn {
	t.Helper()
	return s.ConnectAs(t, Users[role])
}

// ConnectAs opens a watched connection as u, on its private inbox when it
// has one.
func (s *Stack) ConnectAs(t testing.TB, u natsauth.User) *Conn {
	t.Helper()
	return ConnectTo(t, s.URL, u)
}

// ConnectTo opens a watched connection as u to the server at url (a
// mesh hub, say), on u's private inbox when it has one.
func ConnectTo(t testing.TB, url string, u natsauth.User) *Conn {
	t.Helper()
	opts := []nats.Option{nats.UserInfo(u.Name, u.Password)}
	if u.PrivateInbox {
		opts = append(opts, nats.CustomInboxPrefix(natsauth.InboxPrefix(u.Name)))
	}
	c := &Conn{Watched: bustest.ConnectWatched(t, url, opts...)}
	var err error
	if c.JS, err = jetstream.New(c.Conn); err != nil {
		t.Fatal(err)
	}
	return c
}

// Device is an authority and one device of it holding a token.
type Device struct {
	AuthPub  ed25519.PublicKey
	AuthPriv ed25519.PrivateKey
	Pub      ed25519.PublicKey
	Priv     ed25519.PrivateKey
	Token    []byte

	mu  sync.Mutex
	hlc uint64
}

// NewDevice makes an authority and a device with rights for an hour.
func NewDevice(t testing.TB, rights ...capability.Right) *Device {
	t.Helper()
	d := &Device{}
	d.AuthPub, d.AuthPriv, _ = ed25519.GenerateKey(rand.Reader)
	d.Pub, d.Priv, _ = ed25519.GenerateKey(rand.Reader)
	if len(rights) == 0 {
		rights = []capability.Right{
			{Collection: capability.AnyCollection, Op: capability.OpRead},
			{Collection: capability.AnyCollection, Op: capability.OpWrite},
		}
	}
	var err error
	if d.Token, err = capability.Mint(d.AuthPriv, d.Pub, rights, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	return d
}

// Authority is the device's authority id.
func (d *Device) Authority() events.AuthorityID { return events.AuthorityIDOf(d.AuthPub) }

// nextHLC is the wall clock in milliseconds, kept increasing.
func (d *Device) nextHLC() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hlc = max(d.hlc+1, uint64(time.Now().UnixMilli()))
	return d.hlc
}

// Body is a put of fields to coll/doc by this device, unsigned, for tests
// that tamper with it before signing.
func (d *Device) Body(coll, doc string, fields map[string]any) *eventsv1.FactBody {
	hash, _ := hex.DecodeString(events.TokenHash(d.Token))
	raw, _ := json.Marshal(fields)
	return &eventsv1.FactBody{
		AuthorityKey: d.AuthPub,
		Hlc:          &eventsv1.HLC{WallMillis: d.nextHLC()},
		Collection:   coll,
		Document:     doc,
		Op:           &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: raw}},
		TokenHash:    hash,
	}
}

// Put signs a put of fields to coll/doc.
func (d *Device) Put(t testing.TB, coll, doc string, fields map[string]any) *events.Fact {
	t.Helper()
	f, err := events.SignFact(d.Priv, d.Body(coll, doc, fields))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Batch encodes facts with the tokens they cite, the INGRESS body.
func Batch(tokens [][]byte, facts ...*events.Fact) []byte {
	fb := &eventsv1.FactBatch{Tokens: tokens}
	for _, f := range facts {
		fb.Facts = append(fb.Facts, f.Proto())
	}
	b, _ := proto.Marshal(fb)
	return b
}

// Ingest publishes body to the authority's INGRESS subject with JetStream
// and waits for the stream's ack.
func Ingest(ctx context.Context, js jetstream.JetStream, auth events.AuthorityID, body []byte) error {
	_, err := js.Publish(ctx, events.IngressFactSubject(auth), body)
	return err
}

// InJournal reports whether JOURNAL holds f, by its Nats-Msg-Id.
func (s *Stack) InJournal(ctx context.Context, f *events.Fact) (bool, error) {
	st, err := s.OpsJS.Stream(ctx, events.StreamJournal)
	if err != nil {
		return false, err
	}
	m, err := st.GetLastMsgForSubject(ctx, events.JournalSubject(f.Authority, f.Collection()))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return m.Header.Get(nats.MsgIdHdr) == f.ID.String(), nil
}

// Msgs returns how many messages a stream holds.
func (s *Stack) Msgs(ctx context.Context, stream string) (uint64, error) {
	st, err := s.OpsJS.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// LastDenial returns the newest DENIED entry for reason, if any.
func (s *Stack) LastDenial(ctx context.Context, reason events.Reason) (*eventsv1.Denial, error) {
	st, err := s.OpsJS.Stream(ctx, events.StreamDenied)
	if err != nil {
		return nil, err
	}
	m, err := st.GetLastMsgForSubject(ctx, events.DeniedSubject(reason))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var d eventsv1.Denial
	if err := proto.Unmarshal(m.Data, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Request sends a client API request as d, with its token and authority
// key in the headers, and returns the reply.
func (d *Device) Request(ctx context.Context, nc *nats.Conn, proto, op string, auth events.AuthorityID, body []byte) (*nats.Msg, error) {
	m := nats.NewMsg(events.APISubject(proto, op, auth))
	m.Data = body
	m.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(d.Token))
	m.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(d.AuthPub))
	return nc.RequestMsgWithContext(ctx, m)
}

// ReadJournal returns every fact JOURNAL holds for auth, in order.
func ReadJournal(ctx context.Context, t testing.TB, js jetstream.JetStream, auth events.AuthorityID) []*events.Fact {
	t.Helper()
	var out []*events.Fact
	for _, m := range ReadStream(ctx, t, js, events.StreamJournal, events.JournalAuthorityFilter(auth)) {
		f, err := events.DecodeFact(m.Data())
		if err != nil {
			t.Fatalf("JOURNAL message %s: %v", m.Subject(), err)
		}
		out = append(out, f)
	}
	return out
}

// ReadStream returns every message stream holds on subjects matching
// filter, in order. It reads until the consumer has nothing pending, not
// until a fetch comes back empty: on a cluster a fetch is cut short when
// the stream's leader changes. Each request has a timeout of its own and
// is retried, since a cluster that is electing a leader drops requests
// without an answer.
func ReadStream(ctx context.Context, t testing.TB, js jetstream.JetStream, stream, filter string) []jetstream.Msg {
	t.Helper()
	var cons jetstream.Consumer
	bustest.Eventually(t, time.Minute, func() bool {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var err error
		cons, err = js.OrderedConsumer(cctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
		return err == nil
	}, "a consumer on %s", stream)
	var out []jetstream.Msg
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n, pending := 0, uint64(0)
		for m := range batch.Messages() {
			n++
			out = append(out, m)
			meta, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			pending = meta.NumPending
		}
		if n == 0 {
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := cons.Info(ictx)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					t.Fatalf("reading %s: %v (%d messages read)", stream, err, len(out))
				}
				continue
			}
			pending = info.NumPending
		}
		if pending == 0 {
			return out
		}
	}
}

// QueryDocuments reads every document of coll, deleted ones too, through
// the guard as d, by id.
func QueryDocuments(ctx context.Context, nc *nats.Conn, d *Device, coll string) (map[string]events.Document, error) {
	out := map[string]events.Document{}
	cursor := ""
	for {
		body, _ := json.Marshal(events.QueryRequest{Selection: events.Selection{Collection: coll, Deleted: events.IncludeDeleted}, Limit: events.MaxQueryLimit, Cursor: cursor})
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		reply, err := d.Request(rctx, nc, events.JournalProto, events.OpQuery, d.Authority(), body)
		cancel()
		if err != nil {
			return nil, err
		}
		if r := reply.Header.Get(events.HeaderReason); r != "" {
			return nil, fmt.Errorf("query: %s: %s", r, reply.Data)
		}
		var qr events.QueryReply
		if err := json.Unmarshal(reply.Data, &qr); err != nil {
			return nil, err
		}
		for _, doc := range qr.Documents {
			out[doc.ID] = doc
		}
		if qr.NextCursor == "" {
			return out, nil
		}
		cursor = qr.NextCursor
	}
}
