package memory_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/memory"
	"github.com/factsync/factsync/sdk/sdktest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newPeers makes n backends of one fresh authority on one network, with
// discovery and sync started.
func newPeers(t *testing.T, n int, tweak func(*sdk.Config)) (*memory.Network, []*memory.Backend) {
	t.Helper()
	network, out := newBackends(t, n, tweak)
	for _, b := range out {
		if err := b.PeerDiscovery().Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := b.SyncEngine().Start(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	return network, out
}

// newBackends makes n initialized backends of one fresh authority on one
// network, with discovery and sync not started.
func newBackends(t *testing.T, n int, tweak func(*sdk.Config)) (*memory.Network, []*memory.Backend) {
	t.Helper()
	authPub, _, _ := ed25519.GenerateKey(rand.Reader)
	network := memory.NewNetwork()
	var out []*memory.Backend
	for i := range n {
		_, device, _ := ed25519.GenerateKey(rand.Reader)
		cfg := sdk.Config{AuthorityKey: authPub, DeviceKey: device, Token: fmt.Appendf(nil, "token of device %d", i), StateDir: t.TempDir()}
		if tweak != nil {
			tweak(&cfg)
		}
		b := memory.New(memory.Options{Network: network})
		if err := b.Initialize(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Shutdown(t.Context()) })
		out = append(out, b)
	}
	return network, out
}

func TestAcceptance(t *testing.T) {
	sdktest.TestBackend(t, sdktest.Setup{
		NewClients: func(t *testing.T, n int, tweak func(*sdk.Config)) []sdk.DataSyncBackend {
			_, backends := newPeers(t, n, tweak)
			out := make([]sdk.DataSyncBackend, len(backends))
			for i, b := range backends {
				out[i] = b
			}
			return out
		},
		NewPeerClients: func(t *testing.T, n int) sdktest.Peers {
			network, backends := newBackends(t, n, nil)
			p := sdktest.Peers{
				Cut:  func(i int) { cutOff(network, backends, i, network.Cut) },
				Heal: func(i int) { cutOff(network, backends, i, network.Heal) },
			}
			for _, b := range backends {
				p.Clients = append(p.Clients, b)
			}
			return p
		},
	})
}

// cutOff applies cut (Network.Cut or Heal) between peer i and every other.
func cutOff(network *memory.Network, backends []*memory.Backend, i int, cut func(a, b events.PeerID)) {
	for j, other := range backends {
		if j != i {
			cut(backends[i].Info().Peer, other.Info().Peer)
		}
	}
}
