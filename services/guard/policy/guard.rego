# Package factsync.guard is the deployment's policy on top of the guard's
# fixed checks (signature, token, revocation, clock skew). The guard asks for
# data.factsync.guard.deny with one input document per fact or request (see
# docs/guard.md) and refuses when the set is not empty. Each element names a
# stable reason code and a sentence; reasons other than too_large and
# rate_limited are reported as policy_denied.
package factsync.guard

import rego.v1

cfg := data.factsync.config

deny contains {"reason": "too_large", "detail": msg} if {
	input.kind == "fact"
	input.size > cfg.max_fact_bytes
	msg := sprintf("fact is %d bytes, policy limit %d", [input.size, cfg.max_fact_bytes])
}

deny contains {"reason": "policy_denied", "detail": msg} if {
	not collection_allowed
	msg := sprintf("collection %q is not allowed on this peer", [input.collection])
}

deny contains {"reason": "policy_denied", "detail": msg} if {
	cfg.registration == "closed"
	not input.authority in cfg.authorities
	msg := sprintf("authority %s is not registered on this peer (registration is closed)", [input.authority])
}

deny contains {"reason": "rate_limited", "detail": msg} if {
	input.kind == "fact"
	input.rate.count > rate_limit
	msg := sprintf("authority %s is over its limit of %d facts per %d s", [input.authority, rate_limit, input.rate.window_seconds])
}

deny contains {"reason": "policy_denied", "detail": msg} if {
	input.kind == "request"
	input.op == "ota:approve"
	not ota_approver
	msg := sprintf("device %s is not an OTA approver of authority %s", [input.device, input.authority])
}

# collection_allowed: "*" in allowed_collections opens every collection;
# requests about the authority as a whole name the collection "*".
collection_allowed if "*" in cfg.allowed_collections

collection_allowed if input.collection in cfg.allowed_collections

collection_allowed if input.collection == "*"

# rate_limit is the authority's own limit, else the default.
rate_limit := n if {
	n := cfg.rate_limits.per_authority[input.authority]
} else := cfg.rate_limits.default_per_window

# ota_approver: when an authority lists approvers, only those devices'
# approvals count; with no list, any device whose token grants
# ota:approve counts.
ota_approver if not cfg.ota.approvers[input.authority]

ota_approver if input.device in cfg.ota.approvers[input.authority]
