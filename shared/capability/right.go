// Package capability is factsync's Biscuit token layer. An authority key is
// the root of its tokens: it mints a token that names one device public key,
// the rights that device holds, and an expiry. A holder attenuates a token by
// appending a block that narrows rights or expiry; nobody can widen one. A
// Verifier checks a token against the authority public key carried by the
// fact or request, with a cache of tokens whose signatures already verified
// and a revocation set that evicts from it.
//
// The datalog a token carries:
//
//	authority block:  device(hex:<device key>);
//	                  right("notes", "write");   // one fact per right
//	                  check if time($t), $t <= <expiry>;
//	attenuation:      check if request("notes:write") or request("*:sync");
//	                  check if time($t), $t <= <shorter expiry>;
//
// The verifier's ambient facts are time(now), operation(op), collection(c)
// and collection("*"), request("c:op") and request("*:op"), and
// request_device(key); its policy is
//
//	check if device($d), request_device($d);
//	allow if right($c, $op), collection($c), operation($op);
//
// Only the authority block and the verifier's own facts feed that policy, so
// facts an attenuation block adds cannot grant anything.
package capability

import (
	"fmt"
	"slices"
	"strings"

	"github.com/factsync/factsync/events"
)

// Op is an operation a right allows.
type Op string

// The operations a token can grant.
const (
	OpRead       Op = "read"
	OpWrite      Op = "write"
	OpSync       Op = "sync"
	OpSnapshot   Op = "snapshot"
	OpOTAPropose Op = "ota:propose"
	OpOTAApprove Op = "ota:approve"
)

// Ops lists every known operation.
var Ops = []Op{OpRead, OpWrite, OpSync, OpSnapshot, OpOTAPropose, OpOTAApprove}

// AnyCollection in a right stands for every collection of the authority. A
// request that concerns the authority as a whole (peer sync, OTA) asks for
// a right on AnyCollection, which only a "*" right grants.
const AnyCollection = "*"

// Right is one (collection, operation) pair.
type Right struct {
	Collection string
	Op         Op
}

// String renders the right as "collection:op", the form ParseRight reads.
func (r Right) String() string { return r.Collection + ":" + string(r.Op) }

// ParseRight reads "collection:op", e.g. "notes:write", "*:sync" or
// "releases:ota:approve". The collection ends at the first ':'.
func ParseRight(s string) (Right, error) {
	coll, op, ok := strings.Cut(s, ":")
	if !ok {
		return Right{}, events.Errorf(events.ReasonMalformed, "right %q is not collection:op", s)
	}
	r := Right{Collection: coll, Op: Op(op)}
	return r, r.Validate()
}

// ParseRights parses each of ss with ParseRight.
func ParseRights(ss []string) ([]Right, error) {
	rights := make([]Right, 0, len(ss))
	for _, s := range ss {
		r, err := ParseRight(s)
		if err != nil {
			return nil, err
		}
		rights = append(rights, r)
	}
	return rights, nil
}

// Validate checks that the collection is a valid name or "*" and the
// operation is known.
func (r Right) Validate() error {
	if r.Collection != AnyCollection && !events.ValidName(r.Collection) {
		return events.Errorf(events.ReasonMalformed, "right %q: collection must be %q or a name of letters, digits, '_' or '-'", r, AnyCollection)
	}
	if !slices.Contains(Ops, r.Op) {
		return events.Errorf(events.ReasonMalformed, "right %q: operation must be one of %v", r, Ops)
	}
	return nil
}

func validateRights(rights []Right) error {
	if len(rights) == 0 {
		return events.Errorf(events.ReasonMalformed, "a token needs at least one right")
	}
	for _, r := range rights {
		if err := r.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// requestFacts are the request strings a right satisfies: its own and the
// wildcard form, so that an attenuation to "*:op" keeps every collection.
func requestStrings(r Right) []string {
	if r.Collection == AnyCollection {
		return []string{r.String()}
	}
	return []string{r.String(), fmt.Sprintf("%s:%s", AnyCollection, r.Op)}
}
