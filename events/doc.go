// Package events holds factsync's contracts: the wire schemas (package
// events/v1), the identities of authorities, devices and peers, the hybrid
// logical clock, the signed fact envelope, the subject catalogue, the
// stream definitions every service provisions, and the stable reason codes
// of rejections.
//
// events imports nothing else of factsync, so every service and the SDK can
// depend on it without depending on each other.
package events
