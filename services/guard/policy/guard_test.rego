package factsync.guard_test

import rego.v1

import data.factsync.guard

fact := {
	"kind": "fact",
	"authority": "aaaaaaaaaaaaaaaaaaaaaaaaaa",
	"device": "bbbbbbbbbbbbbbbbbbbbbbbbbb",
	"collection": "notes",
	"op": "write",
	"size": 200,
	"rate": {"window_seconds": 1, "count": 1},
}

reasons(ds) := {d.reason | some d in ds}

test_default_config_allows_a_fact if {
	count(guard.deny) == 0 with input as fact
}

test_oversized_fact_is_too_large if {
	reasons(guard.deny) == {"too_large"} with input as object.union(fact, {"size": 70000})
}

test_lower_size_limit_from_data if {
	reasons(guard.deny) == {"too_large"} with input as fact
		with data.factsync.config.max_fact_bytes as 100
}

test_collection_not_in_allow_list if {
	reasons(guard.deny) == {"policy_denied"} with input as fact
		with data.factsync.config.allowed_collections as ["tasks"]
}

test_collection_in_allow_list if {
	count(guard.deny) == 0 with input as fact
		with data.factsync.config.allowed_collections as ["tasks", "notes"]
}

test_whole_authority_requests_pass_the_collection_list if {
	count(guard.deny) == 0 with input as object.union(fact, {"kind": "request", "op": "sync", "collection": "*"})
		with data.factsync.config.allowed_collections as ["tasks"]
}

test_closed_registration_refuses_unknown_authority if {
	reasons(guard.deny) == {"policy_denied"} with input as fact
		with data.factsync.config.registration as "closed"
}

test_closed_registration_admits_listed_authority if {
	count(guard.deny) == 0 with input as fact
		with data.factsync.config.registration as "closed"
		with data.factsync.config.authorities as ["aaaaaaaaaaaaaaaaaaaaaaaaaa"]
}

test_default_rate_limit if {
	reasons(guard.deny) == {"rate_limited"} with input as object.union(fact, {"rate": {"window_seconds": 1, "count": 101}})
		with data.factsync.config.rate_limits.default_per_window as 100
}

test_per_authority_rate_limit_overrides_default if {
	count(guard.deny) == 0 with input as object.union(fact, {"rate": {"window_seconds": 1, "count": 101}})
		with data.factsync.config.rate_limits as {"default_per_window": 100, "per_authority": {"aaaaaaaaaaaaaaaaaaaaaaaaaa": 1000}}
}

approval := object.union(fact, {"kind": "request", "op": "ota:approve", "collection": "*"})

test_any_approver_counts_without_a_list if {
	count(guard.deny) == 0 with input as approval
}

test_unlisted_approver_does_not_count if {
	reasons(guard.deny) == {"policy_denied"} with input as approval
		with data.factsync.config.ota.approvers as {"aaaaaaaaaaaaaaaaaaaaaaaaaa": ["cccccccccccccccccccccccccc"]}
}

test_listed_approver_counts if {
	count(guard.deny) == 0 with input as approval
		with data.factsync.config.ota.approvers as {"aaaaaaaaaaaaaaaaaaaaaaaaaa": ["bbbbbbbbbbbbbbbbbbbbbbbbbb"]}
}
