package events

import (
	eventsv1 "github.com/factsync/factsync/events/v1"
)

// EncodeOTAEvent encodes ev as an eventsv1.OTAEvent, the form written to
// the OTA stream. Only the fields of ev.Kind travel; an event whose kind
// is unknown or lacks its payload is refused with ReasonMalformed.
func EncodeOTAEvent(ev OTAEvent) ([]byte, error) {
	m := &eventsv1.OTAEvent{At: timestampOf(ev.At), Proposal: ev.Proposal}
	switch ev.Kind {
	case OTAEventPolicy:
		if ev.Root == nil {
			return nil, Errorf(ReasonMalformed, "OTA policy event has no root")
		}
		m.Event = &eventsv1.OTAEvent_Policy{Policy: &eventsv1.OTAPolicyRotated{Root: signedRootProto(*ev.Root)}}
	case OTAEventProposed:
		m.Event = &eventsv1.OTAEvent_Proposed{Proposed: &eventsv1.OTAProposed{ProposalBytes: ev.ProposalBytes, Proposer: string(ev.Proposer)}}
	case OTAEventApproved:
		if ev.Approval == nil {
			return nil, Errorf(ReasonMalformed, "OTA approved event has no approval")
		}
		m.Event = &eventsv1.OTAEvent_Approved{Approved: approvalProto(*ev.Approval)}
	case OTAEventReadiness:
		if ev.Readiness == nil {
			return nil, Errorf(ReasonMalformed, "OTA readiness event has no readiness")
		}
		m.Event = &eventsv1.OTAEvent_Readiness{Readiness: readinessProto(*ev.Readiness)}
	case OTAEventActivated:
		m.Event = &eventsv1.OTAEvent_Activated{Activated: &eventsv1.OTAActivated{}}
	case OTAEventAborted:
		m.Event = &eventsv1.OTAEvent_Aborted{Aborted: &eventsv1.OTAAborted{Reason: string(ev.AbortReason), Detail: ev.Detail}}
	default:
		return nil, Errorf(ReasonMalformed, "OTA event kind %q is unknown", ev.Kind)
	}
	return encodeEvent("OTA event", m)
}

// DecodeOTAEvent decodes an event of the OTA stream. It checks the shape
// only; the ota ledger judges signatures, states and times.
func DecodeOTAEvent(data []byte) (OTAEvent, error) {
	var m eventsv1.OTAEvent
	if err := decodeEvent("OTA event", data, &m); err != nil {
		return OTAEvent{}, err
	}
	ev := OTAEvent{At: timeOf(m.GetAt()), Proposal: m.GetProposal()}
	switch e := m.GetEvent().(type) {
	case *eventsv1.OTAEvent_Policy:
		ev.Kind = OTAEventPolicy
		root := signedRootOf(e.Policy.GetRoot())
		ev.Root = &root
	case *eventsv1.OTAEvent_Proposed:
		ev.Kind = OTAEventProposed
		ev.ProposalBytes = e.Proposed.GetProposalBytes()
		ev.Proposer = DeviceID(e.Proposed.GetProposer())
	case *eventsv1.OTAEvent_Approved:
		ev.Kind = OTAEventApproved
		a := approvalOf(e.Approved)
		ev.Approval = &a
	case *eventsv1.OTAEvent_Readiness:
		ev.Kind = OTAEventReadiness
		r := readinessOf(e.Readiness)
		ev.Readiness = &r
	case *eventsv1.OTAEvent_Activated:
		ev.Kind = OTAEventActivated
	case *eventsv1.OTAEvent_Aborted:
		ev.Kind = OTAEventAborted
		ev.AbortReason = OTAAbortReason(e.Aborted.GetReason())
		ev.Detail = e.Aborted.GetDetail()
	default:
		return OTAEvent{}, Errorf(ReasonMalformed, "OTA event has no kind this peer knows")
	}
	return ev, nil
}

// EncodeActiveVersion encodes a as an eventsv1.ActiveVersion, the form
// published on OTAActiveSubject.
func EncodeActiveVersion(a ActiveVersion) ([]byte, error) {
	return encodeEvent("active version", &eventsv1.ActiveVersion{
		Protocol:    a.Protocol,
		Proposal:    a.Proposal,
		Package:     a.Package,
		Version:     a.Version,
		ActivatedAt: timestampOf(a.ActivatedAt),
	})
}

// DecodeActiveVersion decodes a message of OTAActiveSubject; protocol 0 is
// refused, as no such version exists.
func DecodeActiveVersion(data []byte) (ActiveVersion, error) {
	var m eventsv1.ActiveVersion
	if err := decodeEvent("active version", data, &m); err != nil {
		return ActiveVersion{}, err
	}
	if m.GetProtocol() == 0 {
		return ActiveVersion{}, Errorf(ReasonMalformed, "message on %s names protocol version 0", OTAActiveSubject)
	}
	return ActiveVersion{
		Protocol:    m.GetProtocol(),
		Proposal:    m.GetProposal(),
		Package:     m.GetPackage(),
		Version:     m.GetVersion(),
		ActivatedAt: timeOf(m.GetActivatedAt()),
	}, nil
}

func signatureProto(s OTASignature) *eventsv1.OTASignature {
	return &eventsv1.OTASignature{KeyId: s.KeyID, Sig: s.Sig}
}

func signatureOf(m *eventsv1.OTASignature) OTASignature {
	return OTASignature{KeyID: m.GetKeyId(), Sig: m.GetSig()}
}

func signedRootProto(r OTASignedRoot) *eventsv1.OTASignedRoot {
	m := &eventsv1.OTASignedRoot{Signed: r.Signed}
	for _, s := range r.Signatures {
		m.Signatures = append(m.Signatures, signatureProto(s))
	}
	return m
}

func signedRootOf(m *eventsv1.OTASignedRoot) OTASignedRoot {
	r := OTASignedRoot{Signed: m.GetSigned()}
	for _, s := range m.GetSignatures() {
		r.Signatures = append(r.Signatures, signatureOf(s))
	}
	return r
}

func approvalProto(a OTAApproval) *eventsv1.OTAApproval {
	return &eventsv1.OTAApproval{Proposal: a.Proposal, Signature: signatureProto(a.Signature)}
}

func approvalOf(m *eventsv1.OTAApproval) OTAApproval {
	return OTAApproval{Proposal: m.GetProposal(), Signature: signatureOf(m.GetSignature())}
}

func readinessProto(r OTAReadiness) *eventsv1.OTAReadiness {
	return &eventsv1.OTAReadiness{Proposal: r.Proposal, Status: string(r.Status), Reason: r.Reason, Signature: signatureProto(r.Signature)}
}

func readinessOf(m *eventsv1.OTAReadiness) OTAReadiness {
	return OTAReadiness{Proposal: m.GetProposal(), Status: OTAReadyStatus(m.GetStatus()), Reason: m.GetReason(), Signature: signatureOf(m.GetSignature())}
}
