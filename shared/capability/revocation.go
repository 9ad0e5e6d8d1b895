package capability

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"sort"

	"github.com/factsync/factsync/events"
)

// DomainRevocation prefixes the bytes an authority signs to revoke tokens,
// so that no other factsync signature can be replayed as a revocation.
const DomainRevocation = "factsync/revocation/v1\x00"

// Revocation is an authority's signed statement that revocation ids are
// revoked. Only the authority may revoke: a holder of an attenuated token
// carries its parent's ids and must not be able to revoke the parent.
// It is the JSON body of the guard's revoke request.
type Revocation struct {
	AuthorityKey []byte   `json:"authority_key"`
	IDs          []string `json:"ids"`
	Signature    []byte   `json:"signature"`
}

// SignRevocation revokes ids (hex revocation ids, see RevocationIDs) with
// the authority key.
func SignRevocation(authority ed25519.PrivateKey, ids []string) (Revocation, error) {
	r := Revocation{AuthorityKey: authority.Public().(ed25519.PublicKey), IDs: append([]string(nil), ids...)}
	msg, err := r.signedBytes()
	if err != nil {
		return Revocation{}, err
	}
	r.Signature = ed25519.Sign(authority, msg)
	return r, nil
}

// Authority returns the id of the authority that signed r.
func (r Revocation) Authority() events.AuthorityID { return events.AuthorityIDOf(r.AuthorityKey) }

// Verify checks the ids' shape and the authority's signature.
func (r Revocation) Verify() error {
	if len(r.AuthorityKey) != ed25519.PublicKeySize {
		return events.Errorf(events.ReasonMalformed, "revocation authority key is %d bytes, want %d", len(r.AuthorityKey), ed25519.PublicKeySize)
	}
	msg, err := r.signedBytes()
	if err != nil {
		return err
	}
	if !ed25519.Verify(r.AuthorityKey, msg, r.Signature) {
		return events.Errorf(events.ReasonBadSignature, "revocation is not signed by authority %s", r.Authority())
	}
	return nil
}

// signedBytes is the domain followed by the sorted ids, one per line.
func (r Revocation) signedBytes() ([]byte, error) {
	if len(r.IDs) == 0 {
		return nil, events.Errorf(events.ReasonMalformed, "revocation names no ids")
	}
	ids := append([]string(nil), r.IDs...)
	sort.Strings(ids)
	msg := []byte(DomainRevocation)
	for _, id := range ids {
		if b, err := hex.DecodeString(id); err != nil || len(b) != ed25519.SignatureSize {
			return nil, events.Errorf(events.ReasonMalformed, "revocation id %q is not %d hex bytes", id, ed25519.SignatureSize)
		}
		msg = append(append(msg, id...), '\n')
	}
	return msg, nil
}

// Marshal encodes r as JSON.
func (r Revocation) Marshal() []byte {
	b, _ := json.Marshal(r)
	return b
}
