package capability

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/biscuit-auth/biscuit-go/v2"
	"github.com/biscuit-auth/biscuit-go/v2/parser"
	"github.com/biscuit-auth/biscuit-go/v2/pb"
	"github.com/factsync/factsync/events"
	"google.golang.org/protobuf/proto"
)

// Mint creates a token rooted at the authority key that grants device the
// rights until expiry.
func Mint(authority ed25519.PrivateKey, device ed25519.PublicKey, rights []Right, expiry time.Time) ([]byte, error) {
	if len(authority) != ed25519.PrivateKeySize {
		return nil, events.Errorf(events.ReasonMalformed, "authority private key is %d bytes, want %d", len(authority), ed25519.PrivateKeySize)
	}
	if len(device) != ed25519.PublicKeySize {
		return nil, events.Errorf(events.ReasonMalformed, "device public key is %d bytes, want %d", len(device), ed25519.PublicKeySize)
	}
	if err := validateRights(rights); err != nil {
		return nil, err
	}
	if expiry.IsZero() {
		return nil, events.Errorf(events.ReasonMalformed, "a token needs an expiry")
	}
	b := biscuit.NewBuilder(authority)
	facts := []biscuit.Fact{fact("device", biscuit.Bytes(device))}
	for _, r := range rights {
		facts = append(facts, fact("right", biscuit.String(r.Collection), biscuit.String(string(r.Op))))
	}
	for _, f := range facts {
		if err := b.AddAuthorityFact(f); err != nil {
			return nil, fmt.Errorf("capability: add fact %s: %w", f, err)
		}
	}
	check, err := expiryCheck(expiry)
	if err != nil {
		return nil, err
	}
	if err := b.AddAuthorityCheck(check); err != nil {
		return nil, fmt.Errorf("capability: add expiry: %w", err)
	}
	token, err := b.Build()
	if err != nil {
		return nil, fmt.Errorf("capability: build token: %w", err)
	}
	return token.Serialize()
}

// Attenuate appends a block that keeps only the listed rights (none listed:
// rights unchanged) and ends validity at expiry (zero: unchanged). The
// result never grants more than token; a right not in token stays
// ungranted.
func Attenuate(token []byte, rights []Right, expiry time.Time) ([]byte, error) {
	if len(rights) == 0 && expiry.IsZero() {
		return nil, events.Errorf(events.ReasonMalformed, "attenuate needs rights or an expiry to narrow to")
	}
	b, err := unmarshal(token)
	if err != nil {
		return nil, err
	}
	block := b.CreateBlock()
	if len(rights) > 0 {
		if err := validateRights(rights); err != nil {
			return nil, err
		}
		check, err := rightsCheck(rights)
		if err != nil {
			return nil, err
		}
		if err := block.AddCheck(check); err != nil {
			return nil, fmt.Errorf("capability: add rights check: %w", err)
		}
	}
	if !expiry.IsZero() {
		check, err := expiryCheck(expiry)
		if err != nil {
			return nil, err
		}
		if err := block.AddCheck(check); err != nil {
			return nil, fmt.Errorf("capability: add expiry check: %w", err)
		}
	}
	narrowed, err := b.Append(rand.Reader, block.Build())
	if err != nil {
		return nil, events.Wrap(events.ReasonBadToken, err, "append attenuation block")
	}
	return narrowed.Serialize()
}

// RevocationIDs returns the hex revocation ids of every block of token, the
// authority block first. Revoking any of them revokes the token and every
// token attenuated from it.
func RevocationIDs(token []byte) ([]string, error) {
	b, err := unmarshal(token)
	if err != nil {
		return nil, err
	}
	return revocationIDs(b), nil
}

func revocationIDs(b *biscuit.Biscuit) []string {
	raw := b.RevocationIds()
	ids := make([]string, len(raw))
	for i, id := range raw {
		ids[i] = hex.EncodeToString(id)
	}
	return ids
}

// Inspect renders token's blocks as datalog text, one block per paragraph,
// with its hash and revocation ids. It does not verify the token.
func Inspect(token []byte) (string, error) {
	b, err := unmarshal(token)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	fmt.Fprintf(&out, "token %s\n", events.TokenHash(token))
	ids := revocationIDs(b)
	for i, block := range blockSections(b.String()) {
		if i == 0 {
			out.WriteString("\nauthority block")
		} else {
			fmt.Fprintf(&out, "\nblock %d", i)
		}
		if i < len(ids) {
			fmt.Fprintf(&out, " (revocation id %s)", ids[i])
		}
		out.WriteString(":\n")
		for _, line := range block {
			fmt.Fprintf(&out, "  %s;\n", line)
		}
	}
	return out.String(), nil
}

var (
	blockFacts  = regexp.MustCompile(`(?m)^\s*facts: \[(.*)\]$`)
	blockRules  = regexp.MustCompile(`(?m)^\s*rules: \[(.*)\]$`)
	blockChecks = regexp.MustCompile(`(?m)^\s*checks: \[(.*)\]$`)
	factSplit   = regexp.MustCompile(`\) `)
)

// blockSections pulls the facts, rules and checks of each block out of
// biscuit-go's String form, the only rendering v2.2.0 exports that
// includes the authority block.
func blockSections(dump string) [][]string {
	var blocks [][]string
	for _, part := range strings.Split(dump, "Block {")[1:] {
		var lines []string
		if m := blockFacts.FindStringSubmatch(part); m != nil && m[1] != "" {
			for _, f := range factSplit.Split(m[1], -1) {
				lines = append(lines, strings.TrimSuffix(f, ")")+")")
			}
		}
		if m := blockRules.FindStringSubmatch(part); m != nil && m[1] != "" {
			lines = append(lines, m[1])
		}
		if m := blockChecks.FindStringSubmatch(part); m != nil && m[1] != "" {
			for i, c := range strings.Split(m[1], ", check if ") {
				if i > 0 {
					c = "check if " + c
				}
				lines = append(lines, c)
			}
		}
		blocks = append(blocks, lines)
	}
	return blocks
}

// unmarshal decodes a token, refusing shapes on which biscuit-go v2.2.0
// would dereference nil (it assumes every optional message is present).
func unmarshal(token []byte) (b *biscuit.Biscuit, err error) {
	if len(token) == 0 {
		return nil, events.Errorf(events.ReasonBadToken, "no token")
	}
	if len(token) > events.MaxToken {
		return nil, events.Errorf(events.ReasonBadToken, "token is %d bytes, limit %d", len(token), events.MaxToken)
	}
	var container pb.Biscuit
	if err := proto.Unmarshal(token, &container); err != nil {
		return nil, events.Wrap(events.ReasonBadToken, err, "decode token")
	}
	blocks := append([]*pb.SignedBlock{container.GetAuthority()}, container.GetBlocks()...)
	for _, sb := range blocks {
		if sb == nil || sb.GetNextKey() == nil || sb.NextKey.Algorithm == nil {
			return nil, events.Errorf(events.ReasonBadToken, "token has a block without its next key")
		}
	}
	if container.GetProof() == nil {
		return nil, events.Errorf(events.ReasonBadToken, "token has no proof")
	}
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, events.Errorf(events.ReasonBadToken, "decode token: %v", r)
		}
	}()
	b, err = biscuit.Unmarshal(token)
	if err != nil {
		return nil, events.Wrap(events.ReasonBadToken, err, "decode token")
	}
	return b, nil
}

func fact(name string, terms ...biscuit.Term) biscuit.Fact {
	return biscuit.Fact{Predicate: biscuit.Predicate{Name: name, IDs: terms}}
}

func expiryCheck(expiry time.Time) (biscuit.Check, error) {
	c, err := parser.FromStringCheckWithParams(`check if time($t), $t <= {expiry}`,
		map[string]biscuit.Term{"expiry": biscuit.Date(expiry.UTC().Truncate(time.Second))})
	if err != nil {
		return biscuit.Check{}, fmt.Errorf("capability: expiry check: %w", err)
	}
	return c, nil
}

// rightsCheck passes when the request is one of rights. It spells each
// alternative as its own query rather than a set, so that Inspect shows
// the strings (biscuit-go prints set members as symbol numbers).
func rightsCheck(rights []Right) (biscuit.Check, error) {
	var queries []string
	params := map[string]biscuit.Term{}
	for i, r := range rights {
		name := fmt.Sprintf("r%d", i)
		queries = append(queries, fmt.Sprintf("request({%s})", name))
		params[name] = biscuit.String(r.String())
	}
	c, err := parser.FromStringCheckWithParams("check if "+strings.Join(queries, " or "), params)
	if err != nil {
		return biscuit.Check{}, fmt.Errorf("capability: rights check: %w", err)
	}
	return c, nil
}
