package ota

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
)

// Client makes OTA requests: what `factsync ota propose/approve/ready/
// status/abort` call. By default it goes through the guard
// (fs.api.ota.<op>.<authority>) with a Biscuit token; Direct addresses the
// service itself, for callers already inside the trust boundary.
type Client struct {
	Conn *nats.Conn
	// Authority is the deployment's release authority, and AuthorityKey
	// its public key, which the guard checks the token against.
	Authority    events.AuthorityID
	AuthorityKey ed25519.PublicKey
	// Token is the caller's Biscuit token: ota:propose to propose and
	// abort, ota:approve to approve, sync to report readiness and fetch,
	// read for status (see events.OTARights).
	Token []byte
	// Direct sends to fs.svc.ota.<op>.<authority>, skipping the guard.
	Direct bool
	// Peer, when set, sends to fs.peer.<Peer>.ota.<op>: across the mesh,
	// through that peer's guard, which checks Token as its own clients'.
	Peer events.PeerID
	// Timeout bounds each request; default 15s.
	Timeout time.Duration
}

// NewProposal fills in a proposal for artifact: its digest and size.
// Protocol is the new sync protocol version of a hard fork, 0 for a soft
// fork. The service fills in the trusted root policy.
func NewProposal(pkg, version string, kind events.OTAKind, protocol uint32, artifact []byte, activateAt, deadline time.Time) events.OTAProposal {
	sum := sha256.Sum256(artifact)
	return events.OTAProposal{
		Package: pkg, Version: version, Kind: kind, Protocol: protocol,
		Artifact:   events.OTAArtifact{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(artifact))},
		ActivateAt: activateAt.UTC(), Deadline: deadline.UTC(),
	}
}

// Propose proposes a release and uploads its artifact.
func (c *Client) Propose(ctx context.Context, prop events.OTAProposal, artifact []byte) (events.OTACeremony, error) {
	return c.one(ctx, events.OTAOpPropose, events.OTAProposeRequest{Collection: "*", Proposal: prop, Artifact: artifact})
}

// Approve signs proposal id with an approver key. It signs the proposal
// bytes the service reports only after checking that they are the bytes
// id names, so a lying service cannot get another release signed.
func (c *Client) Approve(ctx context.Context, id string, key ed25519.PrivateKey) (events.OTACeremony, error) {
	cer, err := c.Ceremony(ctx, id)
	if err != nil {
		return events.OTACeremony{}, err
	}
	return c.one(ctx, events.OTAOpApprove, events.OTAApproveRequest{Collection: "*", Approval: SignApproval(key, cer.ProposalBytes)})
}

// Ready fetches the artifact of proposal id, stages it into dir after
// checking it against the policy this peer trusts, and reports the
// outcome signed with peerKey: ready, or rejected with the reason. The
// returned error is about the requests; a rejection is in the ceremony.
func (c *Client) Ready(ctx context.Context, id string, peerKey ed25519.PrivateKey, dir string, trusted *Policy) (events.OTACeremony, error) {
	cer, err := c.Ceremony(ctx, id)
	if err != nil {
		return events.OTACeremony{}, err
	}
	artifact, err := c.Fetch(ctx, id)
	if err != nil {
		return events.OTACeremony{}, err
	}
	r := StageAndReport(dir, trusted, cer, artifact, peerKey)
	return c.one(ctx, events.OTAOpReady, events.OTAReadyRequest{Collection: "*", Readiness: r})
}

// Report sends a readiness report made elsewhere, e.g. not_ready.
func (c *Client) Report(ctx context.Context, r events.OTAReadiness) (events.OTACeremony, error) {
	return c.one(ctx, events.OTAOpReady, events.OTAReadyRequest{Collection: "*", Readiness: r})
}

// Status returns the trusted policy, the version in force and ceremony id,
// or every ceremony when id is empty.
func (c *Client) Status(ctx context.Context, id string) (events.OTAStatusReply, error) {
	var reply events.OTAStatusReply
	err := c.request(ctx, events.OTAOpStatus, events.OTAStatusRequest{Collection: "*", Proposal: id}, &reply)
	return reply, err
}

// Ceremony returns ceremony id, after checking that its proposal bytes
// are the ones id names.
func (c *Client) Ceremony(ctx context.Context, id string) (events.OTACeremony, error) {
	st, err := c.Status(ctx, id)
	if err != nil {
		return events.OTACeremony{}, err
	}
	return pick(st, id)
}

// Abort aborts ceremony id with reason manual.
func (c *Client) Abort(ctx context.Context, id, detail string) (events.OTACeremony, error) {
	return c.one(ctx, events.OTAOpAbort, events.OTAAbortRequest{Collection: "*", Proposal: id, Detail: detail})
}

// Rotate submits the next root policy, signed by a threshold of the
// current and of its own root keys (see SignRoot).
func (c *Client) Rotate(ctx context.Context, root events.OTASignedRoot) (events.OTAStatusReply, error) {
	var reply events.OTAStatusReply
	err := c.request(ctx, events.OTAOpPolicy, events.OTAPolicyRequest{Collection: "*", Root: root}, &reply)
	return reply, err
}

// Fetch downloads the artifact of proposal id in chunks.
func (c *Client) Fetch(ctx context.Context, id string) ([]byte, error) {
	var out []byte
	for {
		var chunk events.OTAFetchReply
		if err := c.request(ctx, events.OTAOpFetch, events.OTAFetchRequest{Collection: "*", Proposal: id, Offset: int64(len(out))}, &chunk); err != nil {
			return nil, err
		}
		out = append(out, chunk.Data...)
		if int64(len(out)) >= chunk.Size {
			return out, nil
		}
		if len(chunk.Data) == 0 {
			return nil, events.Errorf(events.ReasonInternal, "artifact of %s stopped at %d of %d bytes", id, len(out), chunk.Size)
		}
	}
}

// one makes a request whose reply names one ceremony.
func (c *Client) one(ctx context.Context, op string, req any) (events.OTACeremony, error) {
	var reply events.OTAStatusReply
	if err := c.request(ctx, op, req, &reply); err != nil {
		return events.OTACeremony{}, err
	}
	if len(reply.Ceremonies) != 1 {
		return events.OTACeremony{}, events.Errorf(events.ReasonInternal, "the %s reply names %d ceremonies, not 1", op, len(reply.Ceremonies))
	}
	return pick(reply, reply.Ceremonies[0].ID)
}

func pick(st events.OTAStatusReply, id string) (events.OTACeremony, error) {
	for _, cer := range st.Ceremonies {
		if cer.ID != id {
			continue
		}
		if ProposalID(cer.ProposalBytes) != id {
			return events.OTACeremony{}, events.Errorf(events.ReasonBadSignature, "the service reported proposal bytes for %s that have id %s", id, ProposalID(cer.ProposalBytes))
		}
		return cer, nil
	}
	return events.OTACeremony{}, events.Errorf(events.ReasonNotFound, "no proposal %q", id)
}

func (c *Client) request(ctx context.Context, op string, req, reply any) error {
	msg, err := c.message(op, req)
	if err != nil {
		return err
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = requestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	bus.InjectTrace(ctx, msg.Header)
	resp, err := c.Conn.RequestMsgWithContext(ctx, msg)
	if errors.Is(err, nats.ErrNoResponders) {
		return events.Errorf(events.ReasonUnavailable, "nobody answers %s: no ota service, or the peer is not on the mesh", msg.Subject)
	}
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "ota "+op+" request")
	}
	if e := events.DecodeError(resp.Data); e != nil {
		return e
	}
	if err := json.Unmarshal(resp.Data, reply); err != nil {
		return events.Wrap(events.ReasonMalformed, err, "ota "+op+" reply does not decode")
	}
	return nil
}

// message addresses req to the op: through the local guard, to the
// service directly, or to a peer's guard across the mesh.
func (c *Client) message(op string, req any) (*nats.Msg, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "encode request")
	}
	subject := events.APISubject(Name, op, c.Authority)
	switch {
	case c.Peer != "":
		subject = events.PeerSubject(c.Peer, Name, op)
	case c.Direct:
		subject = events.ServiceSubject(Name, op, c.Authority)
	}
	msg := nats.NewMsg(subject)
	msg.Data = body
	if c.Token != nil {
		msg.Header.Set(events.HeaderToken, base64.StdEncoding.EncodeToString(c.Token))
	}
	if c.AuthorityKey != nil {
		msg.Header.Set(events.HeaderAuthorityKey, hex.EncodeToString(c.AuthorityKey))
	}
	if c.Peer != "" {
		// A peer request names its authority in a header (the subject
		// names the peer), and the protocol version this build speaks.
		msg.Header.Set(events.HeaderAuthority, string(c.Authority))
		events.SetProtocolVersion(msg.Header)
	}
	return msg, nil
}
