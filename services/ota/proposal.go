package ota

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/semver"
)

// EncodeProposal is the one encoding of a proposal: the bytes approvers
// sign a digest of, and that the OTA stream keeps.
func EncodeProposal(p events.OTAProposal) []byte {
	b, err := json.Marshal(p)
	if err != nil {
		panic("ota: a proposal always encodes: " + err.Error())
	}
	return b
}

// DecodeProposal decodes proposal bytes, refusing any but the one encoding
// EncodeProposal gives: a proposal has one id, so it cannot be proposed a
// second time in another spelling.
func DecodeProposal(b []byte) (events.OTAProposal, error) {
	var p events.OTAProposal
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return events.OTAProposal{}, events.Wrap(events.ReasonMalformed, err, "proposal does not decode")
	}
	if !bytes.Equal(EncodeProposal(p), b) {
		return events.OTAProposal{}, events.Errorf(events.ReasonMalformed, "proposal is not in its canonical encoding")
	}
	return p, nil
}

// ProposalDigest is what approvals sign: the SHA-256 of the proposal's
// domain-separated bytes.
func ProposalDigest(proposalBytes []byte) [sha256.Size]byte {
	return sha256.Sum256(transcript(domainProposal, proposalBytes))
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// ProposalID names a proposal: its digest in lowercase base32, cut to
// events.IDLen characters like every factsync id, so it is safe in a
// subject and short enough to type.
func ProposalID(proposalBytes []byte) string {
	d := ProposalDigest(proposalBytes)
	return strings.ToLower(idEncoding.EncodeToString(d[:]))[:events.IDLen]
}

// CheckProposal checks a proposal against the policy at time at (when it
// is recorded): the policy is fresh and is the one the proposal names, the
// fields are in shape, the activation gives at least the minimum notice,
// and a hard fork raises the protocol above active. Version monotonicity
// per package is the Ledger's to check: it knows the history.
func (p *Policy) CheckProposal(prop events.OTAProposal, at time.Time, active uint32) error {
	if err := p.CheckFresh(at); err != nil {
		return err
	}
	if prop.PolicyVersion != p.Version || prop.PolicyDigest != p.DigestHex() {
		return events.Errorf(events.ReasonConflict, "proposal names root policy version %d (digest %.12s…), but the trusted root is version %d (digest %.12s…); metadata from different policies does not mix",
			prop.PolicyVersion, prop.PolicyDigest, p.Version, p.DigestHex())
	}
	if err := events.CheckName("package", prop.Package); err != nil {
		return err
	}
	if !semver.IsValid(prop.Version) || semver.Canonical(prop.Version) != prop.Version {
		return events.Errorf(events.ReasonMalformed, "version %q is not a canonical semantic version like v1.2.3", prop.Version)
	}
	if d, err := hex.DecodeString(prop.Artifact.SHA256); err != nil || len(d) != sha256.Size || strings.ToLower(prop.Artifact.SHA256) != prop.Artifact.SHA256 {
		return events.Errorf(events.ReasonMalformed, "artifact digest %q is not a lowercase hex SHA-256", prop.Artifact.SHA256)
	}
	if prop.Artifact.Size <= 0 || prop.Artifact.Size > events.MaxOTAArtifact {
		return events.Errorf(events.ReasonTooLarge, "artifact size %d is outside 1..%d bytes", prop.Artifact.Size, events.MaxOTAArtifact)
	}
	switch prop.Kind {
	case events.OTAHardFork:
		if prop.Protocol <= active {
			return events.Errorf(events.ReasonRollback, "a hard fork must raise the sync protocol above %d, the version in force; it names %d", active, prop.Protocol)
		}
	case events.OTASoftFork:
		if prop.Protocol != 0 {
			return events.Errorf(events.ReasonMalformed, "a soft fork keeps the sync protocol; leave protocol unset (it is %d)", prop.Protocol)
		}
	default:
		return events.Errorf(events.ReasonMalformed, "kind %q is neither %q nor %q", prop.Kind, events.OTASoftFork, events.OTAHardFork)
	}
	if earliest := at.Add(p.MinNotice); prop.ActivateAt.Before(earliest) {
		return events.Errorf(events.ReasonMalformed, "activation at %s gives less than the minimum notice of %s; the earliest is %s",
			prop.ActivateAt.UTC().Format(time.RFC3339), p.MinNotice, earliest.UTC().Format(time.RFC3339))
	}
	if !prop.Deadline.After(prop.ActivateAt) {
		return events.Errorf(events.ReasonMalformed, "deadline %s must be after the activation time %s",
			prop.Deadline.UTC().Format(time.RFC3339), prop.ActivateAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// SignApproval approves the proposal encoded as proposalBytes with an
// approver key.
func SignApproval(key ed25519.PrivateKey, proposalBytes []byte) events.OTAApproval {
	return events.OTAApproval{
		Proposal:  ProposalID(proposalBytes),
		Signature: signTranscript(key, approvalTranscript(proposalBytes)),
	}
}

func approvalTranscript(proposalBytes []byte) []byte {
	d := ProposalDigest(proposalBytes)
	return transcript(domainApproval, d[:])
}

// VerifyApproval checks that a is a valid signature over the proposal by
// one of the policy's approvers.
func (p *Policy) VerifyApproval(proposalBytes []byte, a events.OTAApproval) error {
	if a.Proposal != ProposalID(proposalBytes) {
		return events.Errorf(events.ReasonBadSignature, "approval is for proposal %q, not %q", a.Proposal, ProposalID(proposalBytes))
	}
	return p.approvers.verifyOne("approval of "+a.Proposal, approvalTranscript(proposalBytes), a.Signature)
}

// CountApprovals returns how many distinct approvers validly signed the
// proposal. A peer uses it to check approvals itself before it stages a
// release, rather than trust anyone's count.
func (p *Policy) CountApprovals(proposalBytes []byte, approvals []events.OTAApproval) int {
	sigs := make([]events.OTASignature, 0, len(approvals))
	for _, a := range approvals {
		if a.Proposal == ProposalID(proposalBytes) {
			sigs = append(sigs, a.Signature)
		}
	}
	return p.approvers.count(approvalTranscript(proposalBytes), sigs)
}

// SignReadiness is a peer's signed report on the proposal encoded as
// proposalBytes. reason says why for OTARejected and OTANotReady.
func SignReadiness(peerKey ed25519.PrivateKey, proposalBytes []byte, status events.OTAReadyStatus, reason string) events.OTAReadiness {
	return events.OTAReadiness{
		Proposal:  ProposalID(proposalBytes),
		Status:    status,
		Reason:    reason,
		Signature: signTranscript(peerKey, readinessTranscript(proposalBytes, status, reason)),
	}
}

func readinessTranscript(proposalBytes []byte, status events.OTAReadyStatus, reason string) []byte {
	d := ProposalDigest(proposalBytes)
	return transcript(domainReadiness, d[:], []byte(status), []byte(reason))
}

// VerifyReadiness checks that r is a well-formed report on the proposal
// signed by one of the policy's peers.
func (p *Policy) VerifyReadiness(proposalBytes []byte, r events.OTAReadiness) error {
	if r.Proposal != ProposalID(proposalBytes) {
		return events.Errorf(events.ReasonBadSignature, "readiness is for proposal %q, not %q", r.Proposal, ProposalID(proposalBytes))
	}
	switch r.Status {
	case events.OTAReady, events.OTANotReady:
	case events.OTARejected:
		if r.Reason == "" {
			return events.Errorf(events.ReasonMalformed, "a rejection must say why")
		}
	default:
		return events.Errorf(events.ReasonMalformed, "readiness status %q is not one of %s, %s, %s", r.Status, events.OTAReady, events.OTANotReady, events.OTARejected)
	}
	return p.peers.verifyOne("readiness for "+r.Proposal, readinessTranscript(proposalBytes, r.Status, r.Reason), r.Signature)
}
