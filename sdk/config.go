package sdk

import (
	"crypto/ed25519"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/clock"
)

// Config is what DataSyncBackend.Initialize needs: whose journal, which
// device acts for it, and the token that grants that device its rights.
// Backend-specific settings (a NATS URL, an in-process network) go to the
// backend's constructor instead.
type Config struct {
	// AuthorityKey is the public key of the authority whose journal the
	// client reads and writes. Required.
	AuthorityKey ed25519.PublicKey
	// DeviceKey signs every fact the client writes. Required.
	DeviceKey ed25519.PrivateKey
	// Token is the device's Biscuit token (binary form), rooted at
	// AuthorityKey and naming DeviceKey's public key. Every fact cites it
	// by hash and every batch carries it once. Required.
	Token []byte
	// StateDir, when set, keeps the device's last HLC reading across
	// restarts, so facts written after a restart order after the ones
	// before it even if the wall clock stepped back. Without it the HLC
	// starts from the wall clock.
	StateDir string
	// Clock is the time source; the zero value means the wall clock.
	Clock clock.Clock
	// ObserveBuffer bounds how many events an observer may fall behind
	// before it is resynchronised with a fresh Initial. Zero means
	// DefaultObserveBuffer.
	ObserveBuffer int
}

// DefaultObserveBuffer is the default bound of an observer's queue.
const DefaultObserveBuffer = 256

// Validate checks that the required parts are present and well formed.
func (c Config) Validate() error {
	if len(c.AuthorityKey) != ed25519.PublicKeySize {
		return events.Errorf(events.ReasonMalformed, "config: authority key must be a %d-byte Ed25519 public key", ed25519.PublicKeySize)
	}
	if len(c.DeviceKey) != ed25519.PrivateKeySize {
		return events.Errorf(events.ReasonMalformed, "config: device key must be a %d-byte Ed25519 private key", ed25519.PrivateKeySize)
	}
	if len(c.Token) == 0 {
		return events.Errorf(events.ReasonBadToken, "config: a device token is required")
	}
	if len(c.Token) > events.MaxToken {
		return events.Errorf(events.ReasonTooLarge, "config: token is %d bytes, limit %d", len(c.Token), events.MaxToken)
	}
	if c.ObserveBuffer < 0 {
		return events.Errorf(events.ReasonMalformed, "config: observe buffer %d is negative", c.ObserveBuffer)
	}
	return nil
}

// Authority returns the AuthorityID of AuthorityKey.
func (c Config) Authority() events.AuthorityID { return events.AuthorityIDOf(c.AuthorityKey) }

// Device returns the DeviceID of DeviceKey.
func (c Config) Device() events.DeviceID {
	return events.DeviceIDOf(c.DeviceKey.Public().(ed25519.PublicKey))
}

// TimeSource returns Clock, or the wall clock when Clock is nil.
func (c Config) TimeSource() clock.Clock {
	if c.Clock == nil {
		return clock.Real{}
	}
	return c.Clock
}

// ObserveBufferSize returns ObserveBuffer or its default.
func (c Config) ObserveBufferSize() int {
	if c.ObserveBuffer == 0 {
		return DefaultObserveBuffer
	}
	return c.ObserveBuffer
}
