package guard

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/factsync/factsync/events"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// defaultPolicy holds the Rego policy and data shipped with factsync
// (services/guard/policy).
//
//go:embed policy/*.rego policy/data.json
var defaultPolicy embed.FS

// DefaultPolicy returns the shipped policy directory, used when
// Config.PolicyDir is empty.
func DefaultPolicy() fs.FS {
	sub, _ := fs.Sub(defaultPolicy, "policy")
	return sub
}

// policyQuery is the one query the guard evaluates.
const policyQuery = "data.factsync.guard.deny"

// PolicyInput is the input document of every policy decision; docs/guard.md
// describes each field. Kind is "fact" or "request".
type PolicyInput struct {
	Kind       string
	Subject    string
	Authority  events.AuthorityID
	Device     events.DeviceID
	Collection string
	Op         string // the right's operation: write for facts
	Proto      string // requests: the protocol, e.g. "journal"
	RequestOp  string // requests: the protocol's operation, e.g. "query"
	Document   string // facts
	Delete     bool   // facts
	Size       int
	HLCMillis  uint64 // facts
	NowMillis  int64
	// RateCount is how many facts of Authority the guard has seen in the
	// current window, this one included.
	RateCount     int
	RateWindowSec int
}

func (in *PolicyInput) document() map[string]any {
	return map[string]any{
		"kind":       in.Kind,
		"subject":    in.Subject,
		"authority":  string(in.Authority),
		"device":     string(in.Device),
		"collection": in.Collection,
		"op":         in.Op,
		"proto":      in.Proto,
		"request_op": in.RequestOp,
		"document":   in.Document,
		"delete":     in.Delete,
		"size":       in.Size,
		"hlc_millis": in.HLCMillis,
		"now_millis": in.NowMillis,
		"rate":       map[string]any{"count": in.RateCount, "window_seconds": in.RateWindowSec},
	}
}

// Policy is a prepared OPA policy. Preparing parses and compiles the Rego
// once; each decision only evaluates.
type Policy struct {
	query  rego.PreparedEvalQuery
	digest [32]byte
}

// LoadPolicy prepares the policy in fsys: every *.rego file except the
// *_test.rego ones, and data.json as the data document.
func LoadPolicy(ctx context.Context, fsys fs.FS) (*Policy, error) {
	modules, data, digest, err := readPolicy(fsys)
	if err != nil {
		return nil, err
	}
	opts := []func(*rego.Rego){rego.Query(policyQuery), rego.Store(inmem.NewFromObject(data))}
	for name, src := range modules {
		opts = append(opts, rego.Module(name, src))
	}
	q, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("guard: prepare policy: %w", err)
	}
	return &Policy{query: q, digest: digest}, nil
}

// readPolicy returns the modules and data of fsys and a digest of both, by
// which a reload tells whether anything changed.
func readPolicy(fsys fs.FS) (map[string]string, map[string]any, [32]byte, error) {
	modules := map[string]string{}
	data := map[string]any{}
	names, err := fs.Glob(fsys, "*")
	if err != nil {
		return nil, nil, [32]byte{}, err
	}
	sort.Strings(names)
	h := sha256.New()
	for _, name := range names {
		isRego := strings.HasSuffix(name, ".rego") && !strings.HasSuffix(name, "_test.rego")
		if !isRego && name != "data.json" {
			continue
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, nil, [32]byte{}, fmt.Errorf("guard: read policy %s: %w", name, err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(b))
		h.Write(b)
		if isRego {
			modules[name] = string(b)
		} else if err := json.Unmarshal(b, &data); err != nil {
			return nil, nil, [32]byte{}, fmt.Errorf("guard: policy data %s: %w", name, err)
		}
	}
	if len(modules) == 0 {
		return nil, nil, [32]byte{}, fmt.Errorf("guard: no .rego policy found")
	}
	var digest [32]byte
	copy(digest[:], h.Sum(nil))
	return modules, data, digest, nil
}

// Decide returns nil when the policy allows in, else an error whose reason
// is too_large, rate_limited or policy_denied.
func (p *Policy) Decide(ctx context.Context, in *PolicyInput) error {
	rs, err := p.query.Eval(ctx, rego.EvalInput(in.document()))
	if err != nil {
		return events.Wrap(events.ReasonInternal, err, "evaluate policy")
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return events.Errorf(events.ReasonInternal, "policy has no %s rule", policyQuery)
	}
	denials, ok := rs[0].Expressions[0].Value.([]any)
	if !ok {
		return events.Errorf(events.ReasonInternal, "policy %s is not a set", policyQuery)
	}
	if len(denials) == 0 {
		return nil
	}
	var errs []*events.Error
	for _, d := range denials {
		m, _ := d.(map[string]any)
		reason, _ := m["reason"].(string)
		detail, _ := m["detail"].(string)
		errs = append(errs, events.Errorf(policyReason(reason), "%s", detail))
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errs[0]
}

// policyReason maps a policy's reason to a stable code; a policy may not
// invent codes or claim the guard's fixed ones.
func policyReason(r string) events.Reason {
	switch events.Reason(r) {
	case events.ReasonTooLarge, events.ReasonRateLimited:
		return events.Reason(r)
	}
	return events.ReasonPolicyDenied
}

// policyHolder holds the current policy and swaps in reloads.
type policyHolder struct {
	current atomic.Pointer[Policy]
	dir     string
}

// reload prepares the policy directory again if its content changed. A
// policy that fails to prepare is reported and the running one kept.
func (h *policyHolder) reload(ctx context.Context) (bool, error) {
	if h.dir == "" {
		return false, nil
	}
	fsys := os.DirFS(h.dir)
	_, _, digest, err := readPolicy(fsys)
	if err != nil {
		return false, err
	}
	if cur := h.current.Load(); cur != nil && cur.digest == digest {
		return false, nil
	}
	p, err := LoadPolicy(ctx, fsys)
	if err != nil {
		return false, err
	}
	h.current.Store(p)
	return true, nil
}
