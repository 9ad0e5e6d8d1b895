package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/shared/service"
)

// The anti-entropy service reads its configuration from the data
// directory:
//
//	DATA/sync-tokens/<authority public key hex>.token
//	    a token per authority this peer syncs, rooted at that authority,
//	    granting sync to this peer's key (DATA/peer.key)
//	DATA/peers.txt
//	    static peers, one PeerID a line ('#' starts a comment); others are
//	    discovered by their presence heartbeats
func init() {
	registerService(antientropy.Name, func(o *serveOptions) (service.Service, error) {
		peers, err := readStaticPeers(filepath.Join(o.data, "peers.txt"))
		if err != nil {
			return nil, err
		}
		return antientropy.New(antientropy.Config{
			CredentialsDir: syncTokenDir(o.data),
			StaticPeers:    peers,
		}), nil
	})
}

// syncTokenDir is where a peer keeps the tokens it syncs with.
func syncTokenDir(data string) string { return filepath.Join(data, "sync-tokens") }

func readStaticPeers(path string) ([]events.PeerID, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("static peers: %w", err)
	}
	defer f.Close()
	var peers []events.PeerID
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		if text = strings.TrimSpace(text); text == "" {
			continue
		}
		p := events.PeerID(text)
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		peers = append(peers, p)
	}
	return peers, sc.Err()
}
