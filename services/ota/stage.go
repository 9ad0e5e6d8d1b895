package ota

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/atomicfile"
)

// Stage is what a peer does before it reports ready: it checks the release
// itself, trusting no one's count, and writes the artifact to
// dir/<package>/<version>/<sha256>. The checks: the proposal bytes are the
// ceremony's, name the policy the peer trusts, carry a threshold of valid
// approvals under it, and the artifact has the digest and size they name.
// It returns the staged file's path. An error means the peer must report
// OTARejected with the error as its reason.
func Stage(dir string, trusted *Policy, c events.OTACeremony, artifact []byte) (string, error) {
	if ProposalID(c.ProposalBytes) != c.ID {
		return "", events.Errorf(events.ReasonBadSignature, "the proposal bytes of %s have id %s", c.ID, ProposalID(c.ProposalBytes))
	}
	prop, err := DecodeProposal(c.ProposalBytes)
	if err != nil {
		return "", err
	}
	if prop.PolicyDigest != trusted.DigestHex() {
		return "", events.Errorf(events.ReasonConflict, "release %s was approved under root policy version %d, but this peer trusts version %d",
			c.ID, prop.PolicyVersion, trusted.Version)
	}
	if n := trusted.CountApprovals(c.ProposalBytes, c.Approvals); n < trusted.Threshold() {
		return "", events.Errorf(events.ReasonBadSignature, "release %s has %d valid approvals; the policy needs %d", c.ID, n, trusted.Threshold())
	}
	sum := sha256.Sum256(artifact)
	if int64(len(artifact)) != prop.Artifact.Size || hex.EncodeToString(sum[:]) != prop.Artifact.SHA256 {
		return "", events.Errorf(events.ReasonBadProof, "the artifact of %s (%d bytes, sha256 %x) is not the approved one (%d bytes, sha256 %s)",
			c.ID, len(artifact), sum, prop.Artifact.Size, prop.Artifact.SHA256)
	}
	target := filepath.Join(dir, prop.Package, prop.Version)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", events.Wrap(events.ReasonInternal, err, "create the staging directory")
	}
	path := filepath.Join(target, prop.Artifact.SHA256)
	if err := atomicfile.Write(path, artifact); err != nil {
		return "", events.Wrap(events.ReasonInternal, err, "stage the artifact")
	}
	return path, nil
}

// StageAndReport stages the release of c and returns this peer's signed
// readiness: OTAReady when it is staged, OTARejected with the reason when
// a check fails.
func StageAndReport(dir string, trusted *Policy, c events.OTACeremony, artifact []byte, peerKey ed25519.PrivateKey) events.OTAReadiness {
	if _, err := Stage(dir, trusted, c, artifact); err != nil {
		return SignReadiness(peerKey, c.ProposalBytes, events.OTARejected, err.Error())
	}
	return SignReadiness(peerKey, c.ProposalBytes, events.OTAReady, "")
}

// stageApproved stages, for this peer, each approved release it has not
// reported on, and reports its readiness.
func (s *Service) stageApproved(ctx context.Context) {
	l := s.Ledger()
	me := s.peerID()
	if _, listed := l.Policy.peers.keys[me]; !listed {
		return
	}
	for id, c := range l.Ceremonies {
		if s.reported[id] || (c.State != events.OTAStateCollecting && c.State != events.OTAStateCommitted) {
			continue
		}
		if reportedBy(c, me) {
			s.reported[id] = true
			continue
		}
		var r events.OTAReadiness
		if data, err := s.artifact(ctx, id); err != nil {
			// A missing artifact, or a wrong one from the coordinator, is
			// a rejection; anything else may pass.
			if !events.IsReason(err, events.ReasonNotFound) && !events.IsReason(err, events.ReasonBadProof) {
				s.env.Log.Warn("ota: fetch an artifact to stage", "proposal", id, "err", err)
				continue // try again next step
			}
			r = SignReadiness(s.env.PeerKey, c.ProposalBytes, events.OTARejected, err.Error())
		} else {
			r = StageAndReport(s.cfg.StageDir, l.Policy, c, data, s.env.PeerKey)
		}
		err := s.report(ctx, r)
		if err != nil && (events.IsReason(err, events.ReasonUnavailable) || events.IsReason(err, events.ReasonRateLimited)) {
			s.env.Log.Warn("ota: report readiness", "proposal", id, "err", err)
			continue // try again next step
		}
		if err != nil {
			s.env.Log.Warn("ota: readiness refused", "proposal", id, "err", err)
		}
		s.reported[id] = true
		s.env.Log.Info("ota: reported readiness", "proposal", id, "status", r.Status, "reason", r.Reason)
	}
}

// report records this peer's readiness: in its own stream on the
// coordinator, else by sending it to the coordinator.
func (s *Service) report(ctx context.Context, r events.OTAReadiness) error {
	if s.follower() {
		_, err := s.remote(ctx, events.OTAOpReady, nil, events.OTAReadyRequest{Collection: "*", Readiness: r})
		return err
	}
	_, err := s.commit(ctx, events.OTAEvent{Kind: events.OTAEventReadiness, At: s.env.Clock.Now(), Proposal: r.Proposal, Readiness: &r})
	return err
}

func reportedBy(c events.OTACeremony, peer string) bool {
	for _, r := range c.Readiness {
		if r.Signature.KeyID == peer {
			return true
		}
	}
	return false
}
