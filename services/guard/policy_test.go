package guard

import (
	"context"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/open-policy-agent/opa/v1/tester"
)

// TestRegoPolicies runs the Rego tests shipped beside the policy
// (policy/*_test.rego), as `opa test policy/` would.
func TestRegoPolicies(t *testing.T) {
	results, err := tester.Run(context.Background(), "policy")
	if err != nil {
		t.Fatal(err)
	}
	if len(results) == 0 {
		t.Fatal("found no Rego tests under policy/")
	}
	for _, r := range results {
		if !r.Pass() {
			t.Errorf("%s", r)
		}
	}
	t.Logf("%d Rego tests", len(results))
}

// TestShippedPolicyDecides checks the Go side of the policy contract: the
// prepared query, the input document and the mapping of reasons.
func TestShippedPolicyDecides(t *testing.T) {
	ctx := context.Background()
	p, err := LoadPolicy(ctx, DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	in := PolicyInput{Kind: "fact", Authority: "aaaaaaaaaaaaaaaaaaaaaaaaaa", Collection: "notes", Op: "write", Size: 100, RateCount: 1, RateWindowSec: 1}
	if err := p.Decide(ctx, &in); err != nil {
		t.Fatalf("shipped policy refuses an ordinary fact: %v", err)
	}
	in.Size = events.MaxFactBody + 1
	if err := p.Decide(ctx, &in); !events.IsReason(err, events.ReasonTooLarge) {
		t.Fatalf("oversized fact: %v, want too_large", err)
	}
	in.Size, in.RateCount = 100, 1_000_000
	if err := p.Decide(ctx, &in); !events.IsReason(err, events.ReasonRateLimited) {
		t.Fatalf("fact over the rate limit: %v, want rate_limited", err)
	}
}
