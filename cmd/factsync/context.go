package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/factsync/factsync/events"
)

const defaultContextFile = ".factsync/context.json"

// stackContext is what 'factsync dev' writes so that client commands in
// another shell can use the stack at once. Paths are absolute.
type stackContext struct {
	NATSURL string `json:"nats_url"`
	// NATSOpsURL is for operators' tools such as `go tool nats`: it may
	// read streams, which the client user may not.
	NATSOpsURL string `json:"nats_ops_url,omitempty"`
	// NATSInboxPrefix is the client user's private reply subject prefix;
	// clients must use it (nats.CustomInboxPrefix; the nats CLI's
	// --inbox-prefix), as the server delivers them no other replies.
	NATSInboxPrefix string        `json:"nats_inbox_prefix,omitempty"`
	HTTPURL         string        `json:"http_url"`
	Peer            events.PeerID `json:"peer"`
	// PeerKey is the peer's public key, hex: what `receipt verify
	// --peer-key` checks signatures against.
	PeerKey      string             `json:"peer_public_key"`
	Authority    events.AuthorityID `json:"authority"`
	AuthorityKey string             `json:"authority_key_file"`
	DeviceKey    string             `json:"device_key_file"`
	Token        string             `json:"token_file"`
}

func writeContext(path string, c stackContext) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readContext(path string) (stackContext, error) {
	var c stackContext
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, events.Errorf(events.ReasonUnavailable,
			"no context file at %s: start a stack with 'factsync dev' or pass --context", path)
	}
	if err != nil {
		return c, events.Wrap(events.ReasonUnavailable, err, "read context file")
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, events.Wrap(events.ReasonMalformed, err, "context file "+path+" is not valid JSON")
	}
	return c, nil
}
