// Package mesh links factsync peers over NATS leafnodes: a hub
// nats-server, and peers whose own embedded servers (each with its own
// JetStream domain) connect to it as leafnodes.
//
// Only peer requests (fs.peer.>), presence (fs.presence.>) and the replies
// to peer requests may cross the mesh (docs/architecture.md). Everything
// else a peer's server carries (INGRESS, JOURNAL, tokens, denials,
// changes, API and service requests, JetStream's API) stays local. Two
// walls enforce it: the hub gives each peer's leafnode link a user of its
// own (shared/natsauth's RolePeer bound to the peer's id) that may publish
// and subscribe only its part of those families, and each peer's remote
// denies importing and exporting the local families (Local), so a peer
// that misconfigures its own side still cannot reach another's, and the
// hub holds even when a peer's server is hostile.
//
// The hub scopes each peer to its own subjects, so a hostile peer cannot
// read other peers' requests (which carry their bearer sync tokens) or
// replies: peer i may receive only the requests addressed to it
// (fs.peer.<id>.>), announce only its own presence, and receive replies
// only on its private inbox prefix (Hub.InboxPrefix); it may send
// requests to any peer and answer them on the other peers' private
// inboxes. The connections of peer i that send requests across the mesh
// must therefore use that prefix (nats.CustomInboxPrefix).
package mesh

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/factsync/factsync/shared/natsauth"
	"github.com/nats-io/nats-server/v2/server"
)

// Local are the subject families that must never cross the mesh; every
// peer's remote denies them both ways.
var Local = []string{
	events.IngressPrefix + ".>",
	events.JournalPrefix + ".>",
	events.TokenPrefix + ".>",
	events.DeniedPrefix + ".>",
	events.ChangesPrefix + ".>",
	events.APIPrefix + ".>",
	events.ServicePrefix + ".>",
	events.ReceiptsPrefix + ".>",
	events.OTAPrefix + ".>",
	events.SnapshotPrefix + ".>",
	events.DiscoveryPrefix + ".>",
	"$JS.>", "$KV.>", "$O.>", "$SYS.>",
}

// HubConfig configures a hub.
type HubConfig struct {
	// Host defaults to 127.0.0.1; ports are picked at random.
	Host string
	// Peers are the ids of the peers the hub links, one leaf user each
	// (PeerUser(i) for Peers[i]). The peer's services announce presence
	// as that id, and the hub lets no other through.
	Peers []events.PeerID
	// LeafCompression, when set, is the s2 compression mode of the leafnode
	// links, on the hub's side and each peer's (nats-server's names: "off",
	// "s2_fast", "s2_best", ...). By default both sides use "s2_auto",
	// which picks a mode from the link's round trip as it measured it at
	// connect time: on a busy machine that can be anything from
	// uncompressed to s2_best, a CPU cost per byte that varies from run to
	// run.
	LeafCompression string
	// allowAll turns the hub's permissions off, for the test that shows
	// the peers' deny lists hold on their own.
	allowAll bool
}

// Hub is the nats-server every peer links to.
type Hub struct {
	Server      *server.Server
	host        string
	compression string
	users       []natsauth.User
	leaf        string // host:port of the leafnode listener
	links       []*link
}

// PeerUser is the name of the hub's user for peer i's leafnode link.
func PeerUser(i int) string { return fmt.Sprintf("peer-%d", i) }

// NewPeers makes n fresh peer identities: their keys, and their ids in
// the same order, as HubConfig.Peers wants them.
func NewPeers(n int) ([]ed25519.PrivateKey, []events.PeerID) {
	keys := make([]ed25519.PrivateKey, n)
	ids := make([]events.PeerID, n)
	for i := range n {
		pub, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err) // crypto/rand does not fail
		}
		keys[i], ids[i] = key, events.PeerIDOf(pub)
	}
	return keys, ids
}

// StartHub starts a hub with one leaf user per peer (random passwords),
// each scoped to its peer (see the package comment). It has no other
// user, so nothing else can connect to it.
func StartHub(cfg HubConfig) (*Hub, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	h := &Hub{host: cfg.Host, compression: cfg.LeafCompression, links: make([]*link, len(cfg.Peers))}
	for i, id := range cfg.Peers {
		if err := id.Validate(); err != nil {
			return nil, fmt.Errorf("mesh: peer %d: %w", i, err)
		}
		var others []string
		for j := range cfg.Peers {
			if j != i {
				others = append(others, PeerUser(j))
			}
		}
		h.users = append(h.users, natsauth.User{
			Name: PeerUser(i), Password: secret(), Role: natsauth.RolePeer,
			Peer: id, PrivateInbox: true, ReplyTo: others,
		})
	}
	opts := &server.Options{
		ServerName: "factsync-hub",
		Host:       cfg.Host,
		Port:       server.RANDOM_PORT,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	}
	// The leaf users are the server's users: nats-server applies the
	// permissions of these to leaf connections, and ignores those of
	// leafnodes{authorization{users}}. With users set, nobody connects
	// without one.
	if cfg.allowAll {
		for _, u := range h.users {
			opts.Users = append(opts.Users, &server.User{Username: u.Name, Password: u.Password})
		}
	} else {
		apply, err := natsauth.Apply(h.users...)
		if err != nil {
			return nil, fmt.Errorf("mesh: hub users: %w", err)
		}
		apply(opts)
	}
	opts.LeafNode.Host = cfg.Host
	opts.LeafNode.Port = server.RANDOM_PORT
	// Peers must reach the hub only through their links: an advertised
	// leafnode URL is added to every remote's list, and a cut peer
	// reconnected to it directly, past the cut.
	opts.LeafNode.NoAdvertise = true
	opts.LeafNode.Compression.Mode = cfg.LeafCompression
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("mesh: configure hub: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("mesh: hub did not become ready within 10s")
	}
	h.Server = ns
	h.leaf = net.JoinHostPort(cfg.Host, fmt.Sprint(opts.LeafNode.Port))
	return h, nil
}

// InboxPrefix is the reply-subject prefix peer i's connections must use
// for requests that cross the mesh: the hub delivers peer i no replies
// but those under it.
func (h *Hub) InboxPrefix(i int) string { return natsauth.InboxPrefix(PeerUser(i)) }

// User returns the hub's user for peer i, for tests that connect to the
// hub as a peer would (a hostile peer's server need not be a leafnode).
func (h *Hub) User(i int) natsauth.User { return h.users[i] }

// Link returns the server options of peer i's leafnode link to the hub:
// a remote with peer i's credentials and the deny lists, through a link
// the hub can cut (Cut, Heal) to partition the peer. Use it in
// bus.EmbeddedConfig.Configure.
func (h *Hub) Link(i int) (func(*server.Options), error) {
	return h.link(i, true)
}

func (h *Hub) link(i int, denyLocal bool) (func(*server.Options), error) {
	if i < 0 || i >= len(h.users) {
		return nil, fmt.Errorf("mesh: the hub has no peer %d (it has %d)", i, len(h.users))
	}
	if h.links[i] != nil {
		return nil, fmt.Errorf("mesh: peer %d is linked already", i)
	}
	l, err := newLink(h.host, h.leaf)
	if err != nil {
		return nil, err
	}
	h.links[i] = l
	u := &url.URL{Scheme: "nats-leaf", Host: l.addr(), User: url.UserPassword(h.users[i].Name, h.users[i].Password)}
	remote := &server.RemoteLeafOpts{URLs: []*url.URL{u}, Compression: server.CompressionOpts{Mode: h.compression}}
	if denyLocal {
		remote.DenyImports, remote.DenyExports = Local, Local
	}
	return func(o *server.Options) {
		o.LeafNode.Remotes = append(o.LeafNode.Remotes, remote)
		o.LeafNode.ReconnectInterval = ReconnectInterval
	}, nil
}

// StartPeer starts peer i's embedded server (bus.StartEmbedded with cfg)
// linked to the hub, in JetStream domain "peer-<i>" unless cfg names one.
func (h *Hub) StartPeer(i int, cfg bus.EmbeddedConfig) (*server.Server, error) {
	link, err := h.Link(i)
	if err != nil {
		return nil, err
	}
	if cfg.Domain == "" {
		cfg.Domain = PeerDomain(i)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = PeerDomain(i)
	}
	inner := cfg.Configure
	cfg.Configure = func(o *server.Options) {
		if inner != nil {
			inner(o)
		}
		link(o)
	}
	return bus.StartEmbedded(cfg)
}

// PeerDomain is the JetStream domain of peer i.
func PeerDomain(i int) string { return fmt.Sprintf("peer-%d", i) }

// ReconnectInterval is how soon a peer retries a lost link.
var ReconnectInterval = 250 * time.Millisecond

// Cut partitions peer i: its link drops and refuses to reconnect until
// Heal.
func (h *Hub) Cut(i int) { h.links[i].setCut(true) }

// Heal lets peer i link to the hub again.
func (h *Hub) Heal(i int) { h.links[i].setCut(false) }

// Close shuts the hub and its links down.
func (h *Hub) Close() {
	for _, l := range h.links {
		if l != nil {
			l.close()
		}
	}
	h.Server.Shutdown()
	h.Server.WaitForShutdown()
}

func secret() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// link is a TCP relay between a peer and the hub's leafnode port that can
// be cut, as a network partition would.
type link struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	cut     bool
	refused int // connections turned away while cut
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newLink(host, target string) (*link, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("mesh: link listener: %w", err)
	}
	l := &link{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.cut {
			l.refused++
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", l.target)
		if err != nil {
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		l.conns[c], l.conns[up] = struct{}{}, struct{}{}
		l.wg.Add(2)
		l.mu.Unlock()
		go l.pipe(c, up)
		go l.pipe(up, c)
	}
}

// pipe copies one direction and closes both ends when it ends.
func (l *link) pipe(dst, src net.Conn) {
	defer l.wg.Done()
	_, _ = io.Copy(dst, src)
	l.mu.Lock()
	delete(l.conns, dst)
	delete(l.conns, src)
	l.mu.Unlock()
	_ = dst.Close()
	_ = src.Close()
}

func (l *link) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for c := range l.conns {
			_ = c.Close()
		}
	}
}

func (l *link) close() {
	_ = l.ln.Close()
	l.setCut(true)
	l.wg.Wait()
}
