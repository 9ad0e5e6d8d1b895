package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/services/ota"
	"github.com/factsync/factsync/shared/service"
	"github.com/spf13/pflag"
)

// otaFlags configure the ota service: which authority releases, and the
// root policy it trusts first (see `factsync ota init`).
type otaFlags struct {
	root        string
	authority   string
	coordinator string
	stage       bool
}

func (f *otaFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.root, "ota-root", "", "signed OTA root policy (default DATA/ota/root.json when it exists)")
	fs.StringVar(&f.authority, "ota-authority", "", "release authority id (default: the one recorded beside the root policy)")
	fs.StringVar(&f.coordinator, "ota-coordinator", "", "peer id of the OTA coordinator, whose log this peer follows (default: the one recorded beside the root policy; none: this peer coordinates)")
	fs.BoolVar(&f.stage, "ota-stage", false, "fetch, verify and stage approved releases and report readiness")
}

// errOTANotConfigured: no release policy file exists.
var errOTANotConfigured = errors.New("no OTA release policy")

func init() {
	registerService(ota.Name, func(o *serveOptions) (service.Service, error) {
		rel, err := loadRelease(o)
		if errors.Is(err, errOTANotConfigured) {
			// A peer without a release policy still runs every service:
			// the ota service refuses requests with not_configured and
			// /readyz says why, rather than the peer failing to start
			// or OTA requests timing out unanswered.
			return ota.Unconfigured{Authority: events.AuthorityID(o.ota.authority), Hint: o.otaHint()}, nil
		}
		if err != nil {
			return nil, err
		}
		// The peer presents its sync token for the release authority
		// (DATA/sync-tokens, as anti-entropy does) to other peers' guards.
		creds, err := antientropy.LoadCredentials(syncTokenDir(o.data))
		if err != nil {
			return nil, err
		}
		cred := creds[rel.Authority]
		return ota.New(ota.Config{
			Authority: rel.Authority, Root: rel.Root, Stage: o.ota.stage,
			Coordinator: rel.Coordinator,
			Credential:  ota.Credential{AuthorityKey: cred.AuthorityKey, Token: cred.Token},
		}), nil
	})
}

// otaHint says how to give this peer a release policy.
func (o *serveOptions) otaHint() string {
	return fmt.Sprintf("%s does not exist; make one with 'factsync ota init --authority-key KEY --peer PEER... --out %s' (or pass --ota-root FILE) and restart",
		o.releaseFile(), filepath.Dir(o.releaseFile()))
}

// release is what `factsync ota init` writes: the release authority and
// the signed root policy.
type release struct {
	Authority events.AuthorityID `json:"authority"`
	// Coordinator is the peer whose OTA stream is the ceremonies' log on
	// a mesh; empty: each peer coordinates its own.
	Coordinator events.PeerID        `json:"coordinator,omitempty"`
	Root        events.OTASignedRoot `json:"root"`
}

func (o *serveOptions) releaseFile() string {
	if o.ota.root != "" {
		return o.ota.root
	}
	return filepath.Join(o.data, "ota", "root.json")
}

func loadRelease(o *serveOptions) (release, error) {
	var rel release
	b, err := os.ReadFile(o.releaseFile())
	if errors.Is(err, os.ErrNotExist) {
		return rel, errOTANotConfigured
	}
	if err != nil {
		return rel, err
	}
	if err := json.Unmarshal(b, &rel); err != nil {
		return rel, events.Wrap(events.ReasonMalformed, err, "OTA root policy "+o.releaseFile())
	}
	if o.ota.authority != "" {
		rel.Authority = events.AuthorityID(o.ota.authority)
	}
	if err := rel.Authority.Validate(); err != nil {
		return rel, fmt.Errorf("OTA release authority: %w", err)
	}
	if o.ota.coordinator != "" {
		rel.Coordinator = events.PeerID(o.ota.coordinator)
	}
	if rel.Coordinator != "" {
		if err := rel.Coordinator.Validate(); err != nil {
			return rel, fmt.Errorf("OTA coordinator: %w", err)
		}
	}
	return rel, nil
}
