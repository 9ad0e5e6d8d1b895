package events

import (
	"strings"
)

// The subject catalogue. Every subject factsync uses is built and parsed
// here, so no service spells a subject by hand.
//
//	fs.in.fact.<auth>                       INGRESS: fact batches from clients and peers
//	fs.journal.<auth>.<collection>          JOURNAL: accepted facts, Nats-Msg-Id = FactID
//	fs.token.<auth>.<tokenhash>             JOURNAL: the Biscuit tokens accepted facts cite
//	fs.denied.<reason>                      DENIED: rejections with their reason code
//	fs.changes.<auth>.<collection>.<doc>    core NATS: document change notifications
//	fs.changes.<auth>.$denied.<fact>        core NATS: a fact of auth the guard denied
//	fs.api.<proto>.<op>.<auth>              client requests, answered by the guard
//	fs.svc.<proto>.<op>.<auth>              requests the guard has accepted, answered by a service
//	fs.peer.<peer>.<proto>.<op>             peer-to-peer requests, answered by the guard of <peer>
//	fs.presence.<peer>                      core NATS: peer heartbeats across the mesh
//	fs.discovery.<peer>                     core NATS, local: changes of the presence bucket, republished
//	fs.receipts.checkpoint.<peer>           RECEIPTS: signed checkpoints
//	fs.ota.<event>.<proposal>               OTA: the event-sourced upgrade ceremonies
//	fs.snapshot.<event>.<auth>              SNAPSHOTS: snapshot proposals, approvals and commits
const (
	Root = "fs"

	IngressPrefix  = "fs.in"
	JournalPrefix  = "fs.journal"
	TokenPrefix    = "fs.token"
	DeniedPrefix   = "fs.denied"
	ChangesPrefix  = "fs.changes"
	APIPrefix      = "fs.api"
	ServicePrefix  = "fs.svc"
	PeerPrefix     = "fs.peer"
	PresencePrefix = "fs.presence"
	// DiscoveryPrefix carries PresenceBucket's changes, republished by
	// the server (the bucket's RePublish), for clients that have no
	// JetStream API: one message per heartbeat recorded, and the
	// server's marker (Nats-Marker-Reason) when a peer's key expires.
	DiscoveryPrefix = "fs.discovery"
	ReceiptsPrefix  = "fs.receipts"
	OTAPrefix       = "fs.ota"
	SnapshotPrefix  = "fs.snapshot"
)

// InboxRoot starts every subject factsync answers a request on: nats.go's
// default inboxes (_INBOX.<id>) and the per-user prefixes of
// shared/natsauth (_INBOX_<user>.<id>).
const InboxRoot = "_INBOX"

// CheckReplySubject refuses a reply subject that is not an inbox. A
// service that answers on whatever subject a request names would publish
// with its own permissions where the requester may not: the guard, the
// only writer of JOURNAL, would append its reply to a journal whose
// subject a client put in the reply field.
func CheckReplySubject(subject string) error {
	rest, ok := strings.CutPrefix(subject, InboxRoot)
	if !ok || (!strings.HasPrefix(rest, ".") && !strings.HasPrefix(rest, "_")) || strings.ContainsAny(subject, "*> \t\r\n") {
		return Errorf(ReasonMalformed, "reply subject %.64q is not an inbox (%s.<id> or %s_<user>.<id>): replies go only to inboxes", subject, InboxRoot, InboxRoot)
	}
	return nil
}

// MaxNameLen bounds collection names and document ids, which travel as
// subject tokens.
const MaxNameLen = 128

// ValidName reports whether s may be a collection name or document id:
// 1 to MaxNameLen characters from [A-Za-z0-9_-]. These are exactly the
// characters that are safe in a NATS subject token and in a KV key, and
// that no shell or URL needs to escape.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// CheckName returns a ReasonMalformed error naming what is wrong with a
// collection name or document id, or nil.
func CheckName(kind, s string) error {
	if !ValidName(s) {
		return Errorf(ReasonMalformed, "%s %q must be 1 to %d characters of letters, digits, '_' or '-'", kind, s, MaxNameLen)
	}
	return nil
}

// validToken reports whether s is a non-empty subject token without
// separators, wildcards or whitespace.
func validToken(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' || c == '*' || c == '>' || c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func join(tokens ...string) string { return strings.Join(tokens, ".") }

// IngressFactSubject is where a batch of facts for auth is published.
func IngressFactSubject(auth AuthorityID) string { return join(IngressPrefix, "fact", string(auth)) }

// JournalSubject is where the guard publishes an accepted fact.
func JournalSubject(auth AuthorityID, collection string) string {
	return join(JournalPrefix, string(auth), collection)
}

// JournalAuthorityFilter matches every accepted fact of one authority.
func JournalAuthorityFilter(auth AuthorityID) string { return join(JournalPrefix, string(auth), ">") }

// TokenSubject is where the guard stores a token cited by accepted facts.
// tokenHash is the lowercase hex SHA-256 of the token.
func TokenSubject(auth AuthorityID, tokenHash string) string {
	return join(TokenPrefix, string(auth), tokenHash)
}

// DeniedSubject is where a rejection with reason r is published.
func DeniedSubject(r Reason) string { return join(DeniedPrefix, string(r)) }

// ChangesSubject announces a change to one document.
func ChangesSubject(auth AuthorityID, collection, doc string) string {
	return join(ChangesPrefix, string(auth), collection, doc)
}

// DeniedNoticeToken stands where a collection would in a denial notice's
// subject. '$' is not allowed in collection names, so no document's
// changes can land there, and a client following fs.changes.<auth>.>
// hears about its denied writes without another subscription or right.
const DeniedNoticeToken = "$denied"

// DeniedNoticeSubject tells the writers of auth that the guard denied
// fact (the notice is an eventsv1.Denial without the payload).
func DeniedNoticeSubject(auth AuthorityID, fact FactID) string {
	return join(ChangesPrefix, string(auth), DeniedNoticeToken, fact.String())
}

// ParseDeniedNoticeSubject returns the fact a denial notice is about; ok
// is false for document change subjects and anything else.
func ParseDeniedNoticeSubject(subject string) (fact FactID, ok bool) {
	t := strings.Split(subject, ".")
	if len(t) != 5 || join(t[0], t[1]) != ChangesPrefix || t[3] != DeniedNoticeToken {
		return FactID{}, false
	}
	id, err := ParseFactID(t[4])
	return id, err == nil
}

// APISubject is where a client sends request op of protocol proto about auth.
func APISubject(proto, op string, auth AuthorityID) string {
	return join(APIPrefix, proto, op, string(auth))
}

// ServiceSubject is where the guard forwards an accepted client request.
func ServiceSubject(proto, op string, auth AuthorityID) string {
	return join(ServicePrefix, proto, op, string(auth))
}

// PeerSubject is where another peer sends request op of protocol proto to peer.
func PeerSubject(peer PeerID, proto, op string) string {
	return join(PeerPrefix, string(peer), proto, op)
}

// PresenceSubject carries heartbeats of peer.
func PresenceSubject(peer PeerID) string { return join(PresencePrefix, string(peer)) }

// DiscoverySubject carries PresenceBucket's changes to peer's key.
func DiscoverySubject(peer PeerID) string { return join(DiscoveryPrefix, string(peer)) }

// CheckpointSubject carries the signed checkpoints of peer's receipts log.
func CheckpointSubject(peer PeerID) string { return join(ReceiptsPrefix, "checkpoint", string(peer)) }

// JournalAddress is a parsed JOURNAL subject.
type JournalAddress struct {
	Authority  AuthorityID
	Collection string
}

// ParseJournalSubject parses fs.journal.<auth>.<collection>.
func ParseJournalSubject(subject string) (JournalAddress, error) {
	t := strings.Split(subject, ".")
	if len(t) != 4 || t[0]+"."+t[1] != JournalPrefix {
		return JournalAddress{}, Errorf(ReasonMalformed, "subject %q is not %s.<authority>.<collection>", subject, JournalPrefix)
	}
	a := JournalAddress{Authority: AuthorityID(t[2]), Collection: t[3]}
	if err := a.Authority.Validate(); err != nil {
		return JournalAddress{}, err
	}
	if err := CheckName("collection", a.Collection); err != nil {
		return JournalAddress{}, err
	}
	return a, nil
}

// ParseIngressFactSubject returns the authority of fs.in.fact.<auth>.
func ParseIngressFactSubject(subject string) (AuthorityID, error) {
	t := strings.Split(subject, ".")
	if len(t) != 4 || join(t[0], t[1], t[2]) != IngressPrefix+".fact" {
		return "", Errorf(ReasonMalformed, "subject %q is not %s.fact.<authority>", subject, IngressPrefix)
	}
	auth := AuthorityID(t[3])
	return auth, auth.Validate()
}

// RequestAddress is a parsed API, service or peer request subject.
type RequestAddress struct {
	Proto     string
	Op        string
	Authority AuthorityID // API and service requests
	Peer      PeerID      // peer requests
}

// ParseAPISubject parses fs.api.<proto>.<op>.<auth> (or the fs.svc form
// when prefix is ServicePrefix).
func ParseAPISubject(prefix, subject string) (RequestAddress, error) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	t := strings.Split(rest, ".")
	if !ok || len(t) != 3 || !validToken(t[0]) || !validToken(t[1]) {
		return RequestAddress{}, Errorf(ReasonMalformed, "subject %q is not %s.<proto>.<op>.<authority>", subject, prefix)
	}
	r := RequestAddress{Proto: t[0], Op: t[1], Authority: AuthorityID(t[2])}
	return r, r.Authority.Validate()
}

// ParsePeerSubject parses fs.peer.<peer>.<proto>.<op>.
func ParsePeerSubject(subject string) (RequestAddress, error) {
	rest, ok := strings.CutPrefix(subject, PeerPrefix+".")
	t := strings.Split(rest, ".")
	if !ok || len(t) != 3 || !validToken(t[1]) || !validToken(t[2]) {
		return RequestAddress{}, Errorf(ReasonMalformed, "subject %q is not %s.<peer>.<proto>.<op>", subject, PeerPrefix)
	}
	r := RequestAddress{Peer: PeerID(t[0]), Proto: t[1], Op: t[2]}
	return r, r.Peer.Validate()
}
