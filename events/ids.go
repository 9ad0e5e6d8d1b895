package events

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// IDLen is the length of an AuthorityID, DeviceID or PeerID in characters.
// 26 base32 characters carry 130 bits of the key's SHA-256, enough to make
// collisions infeasible while staying short in a NATS subject.
const IDLen = 26

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// AuthorityID names the journal owned by one Ed25519 key. It is
// self-certifying: anyone holding the public key can recompute it.
type AuthorityID string

// DeviceID names a device key that acts for an authority.
type DeviceID string

// PeerID names a running factsync site by its own key.
type PeerID string

// KeyID derives the 26-character lowercase base32 identifier of a public
// key: base32(SHA-256(pub)) without padding, cut to IDLen. It is safe as a
// NATS subject token.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return strings.ToLower(idEncoding.EncodeToString(sum[:]))[:IDLen]
}

// AuthorityIDOf returns the AuthorityID of an authority public key.
func AuthorityIDOf(pub ed25519.PublicKey) AuthorityID { return AuthorityID(KeyID(pub)) }

// DeviceIDOf returns the DeviceID of a device public key.
func DeviceIDOf(pub ed25519.PublicKey) DeviceID { return DeviceID(KeyID(pub)) }

// PeerIDOf returns the PeerID of a peer public key.
func PeerIDOf(pub ed25519.PublicKey) PeerID { return PeerID(KeyID(pub)) }

// ValidKeyID reports whether s has the shape of a KeyID: IDLen characters
// of lowercase RFC 4648 base32.
func ValidKeyID(s string) bool {
	if len(s) != IDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// Validate returns an error with reason ReasonMalformed unless id is a
// well-formed AuthorityID.
func (id AuthorityID) Validate() error {
	if !ValidKeyID(string(id)) {
		return Errorf(ReasonMalformed, "authority id %q is not %d lowercase base32 characters", string(id), IDLen)
	}
	return nil
}

// Validate returns an error with reason ReasonMalformed unless id is a
// well-formed PeerID.
func (id PeerID) Validate() error {
	if !ValidKeyID(string(id)) {
		return Errorf(ReasonMalformed, "peer id %q is not %d lowercase base32 characters", string(id), IDLen)
	}
	return nil
}
