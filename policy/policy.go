package policy

import (
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/kernelname"
)

// ErrDenied is the sentinel a server wraps when a call is refused by policy.
var ErrDenied = errors.New("policy: denied")

// ErrTestsFailed is returned (wrapped, with the failures listed) by
// LoadChecked and Store when a policy parses but its own test blocks fail.
var ErrTestsFailed = errors.New("policy: tests failed")

// Subject is who is asking, as the overlay identified them.
type Subject struct {
	Node      string                       // tailnet node short name, e.g. "laptop" (or WireGuard peer name)
	User      string                       // login, e.g. "alice@example.com"; empty for tagged nodes
	Tags      []string                     // "tag:ci"
	Caps      map[string][]json.RawMessage // tailnet app capabilities, e.g. "gpumesh.dev/cap/gpu" -> [{"kernels":["matrix_mul"],"gpus":["0"]}]
	WireGuard bool                         // identity from a static WireGuard peer (subject kind "wg:NAME")
	// Pod, when set, is a Kubernetes pod calling through the node above,
	// a trusted agent (see the kubernetes block): only k8s: entries and
	// "*" grant it anything, and denies naming the agent's node, user,
	// tags or capabilities refuse it too.
	Pod *Pod

	// decoded holds Caps' values decoded by Prepare, so that evaluation
	// does not decode the same JSON on every call; nil until then.
	decoded map[string][]capDecoded
}

// Prepare returns s with its capability values decoded once, for a
// subject that is evaluated many times (a server caches it per identity
// lookup). Evaluating a prepared or an unprepared subject gives the same
// decision; the prepared one is faster. Changing s.Caps afterwards needs
// another Prepare.
func (s Subject) Prepare() Subject {
	s.decoded = make(map[string][]capDecoded, len(s.Caps))
	for name, values := range s.Caps {
		ds := make([]capDecoded, len(values))
		for i, raw := range values {
			ds[i].v, ds[i].ok = decodeCapValue(raw)
		}
		s.decoded[name] = ds
	}
	return s
}

// String names the subject the way decisions' reasons do: a pod as
// "k8s:NAMESPACE/SERVICEACCOUNT (pod NAME)", "wg:NAME" for a WireGuard
// peer, else the node name, else the user, else the first tag.
func (s Subject) String() string {
	switch {
	case s.Pod != nil:
		return s.Pod.String()
	case s.WireGuard && s.Node != "":
		return "wg:" + s.Node
	case s.Node != "":
		return s.Node
	case s.User != "":
		return s.User
	case len(s.Tags) > 0:
		return s.Tags[0]
	}
	return "(unidentified)"
}

func (s Subject) empty() bool {
	return s.Pod == nil && s.Node == "" && s.User == "" && len(s.Tags) == 0 && len(s.Caps) == 0
}

// Request is what they ask for.
type Request struct {
	// Kernel is a built-in name ("matrix_mul", "saxpy", ...) or a right
	// ("custom:ptx", "custom:cuda", "observe:metrics").
	Kernel string
	// GPU is the GPU in canonical form: an index without sign or leading
	// zeros ("0", "1"), a GPU or MIG UUID, or "" meaning GPU 0. A GPU in
	// any other form ("00", "+0", " 0") matches no rule and is denied.
	GPU string
	// GPUUUID is the UUID of the same GPU when GPU is an index. A server
	// resolves the caller's GPU first and passes both, so that rules naming
	// the GPU either way match; with only one of them, a rule written with
	// the other form cannot match.
	GPUUUID string
	// Bytes is the request size in bytes (0 when unknown). Evaluate does
	// not deny on size: the server compares it with Limits.MaxRequestBytes
	// and answers with a quota error naming the limit.
	Bytes int64
}

// Limits are the quotas a decision grants. Zero means unlimited (or, where
// noted, the server's default). Enforcing them is the server's job.
type Limits struct {
	MaxMemory       int64         // bytes of device memory the identity may hold; 0 = unlimited
	MaxConcurrent   int           // concurrent calls; 0 = unlimited
	Rate            float64       // calls per second; 0 = unlimited
	Burst           int           // token bucket burst (>=1 when Rate>0)
	MaxRequestBytes int64         // 0 = server default
	IdleTimeout     time.Duration // session idle timeout; 0 = server default
}

// Decision is the outcome of evaluating a request.
type Decision struct {
	Allow  bool
	Rule   string // name of the deciding rule; "" when no rule matched (default deny)
	Reason string // human sentence saying which rule decided and why
	Limits Limits // zero when denied
	Class  string // QoS class name for this caller's traffic ("" = default class)
}

// Class is a QoS class declared in the policy.
type Class struct {
	Name     string    `json:"name"`
	DSCP     dscp.Code `json:"dscp"`     // always set
	Priority int       `json:"priority"` // 0 (most urgent) to 7
	Rate     int64     `json:"rate"`     // bytes/s, 0 = none
	Burst    int64     `json:"burst"`    // bytes, 0 = the scheduler's default
}

// Policy is a compiled policy file. It is immutable: every method is safe
// for concurrent use, and a nil *Policy denies everything.
type Policy struct {
	version int
	source  string
	digest  string

	groups  []group
	classes []Class
	rules   []*rule // allow rules then deny rules, each in file order
	tests   []testCase

	warnings hcl.Diagnostics // see Warnings
	idx      index
	agents   trustedAgents // the kubernetes block's trusted_agents
}

// Warnings are the policy's warnings: things that compile but that a
// careful author would change, each with its file:line:col (today: rules
// that grant custom code, resident buffers or observe:metrics to callers
// named only by node name, which a new device can take over). They do not
// stop a policy from being served.
func (p *Policy) Warnings() hcl.Diagnostics {
	if p == nil {
		return nil
	}
	return slices.Clone(p.warnings)
}

// group is a named set of subjects.
type group struct {
	name    string
	members []subjectRef
}

// Version is the language version the file declared.
func (p *Policy) Version() int {
	if p == nil {
		return 0
	}
	return p.version
}

// Source is the file name the policy came from.
func (p *Policy) Source() string {
	if p == nil {
		return ""
	}
	return p.source
}

// Digest is "sha256:" and the first 16 hex digits of the hash of the
// source bytes, for logs that say which policy is in force.
func (p *Policy) Digest() string {
	if p == nil {
		return ""
	}
	return p.digest
}

// Classes returns the QoS classes the policy declares, in file order.
func (p *Policy) Classes() []Class {
	if p == nil {
		return nil
	}
	return slices.Clone(p.classes)
}

// Class returns the named class.
func (p *Policy) Class(name string) (Class, bool) {
	if p == nil {
		return Class{}, false
	}
	for _, c := range p.classes {
		if c.Name == name {
			return c, true
		}
	}
	return Class{}, false
}

// DenyAll returns a policy with no rules: every request is denied.
func DenyAll() *Policy {
	p := &Policy{version: 1, source: "<deny-all>"}
	p.idx = buildIndex(p)
	return p
}

// AllowAllForTest returns a policy that allows every identified subject to
// call every kernel, custom code included, on every GPU without limits.
// It exists for tests only; never serve with it.
func AllowAllForTest() *Policy {
	r := &rule{
		name:        "allow-all-for-test",
		subjects:    []subjectRef{{kind: kindAny, text: "*"}},
		allGPUs:     true,
		allBuiltins: true,
		kernels:     map[string]bool{KernelCustomPTX: true, KernelCustomCUDA: true},
	}
	p := &Policy{version: 1, source: "<allow-all-for-test>", rules: []*rule{r}}
	p.idx = buildIndex(p)
	return p
}

// The rights beyond the built-in kernels. An allow rule's kernels = ["*"]
// covers every built-in but none of these: each must be granted by name.
// A deny's kernels = ["*"] (or a deny without kernels) covers them all.
const (
	// KernelCustomPTX and KernelCustomCUDA let a caller load and launch
	// its own code.
	KernelCustomPTX  = "custom:ptx"
	KernelCustomCUDA = "custom:cuda"
	// RightMetrics lets a caller read the host's metrics over the overlay.
	RightMetrics = "observe:metrics"
)

// BuiltinKernels returns the built-in kernel names a policy may name,
// sorted: kernelname's list, which gpusvc/kernel implements.
func BuiltinKernels() []string { return kernelname.Builtins() }

func isBuiltin(k string) bool { return kernelname.IsBuiltin(k) }

// rule is a compiled rule or deny block.
type rule struct {
	name     string
	deny     bool
	order    int // position among rules of its kind, in file order
	subjects []subjectRef

	allGPUs bool
	gpus    map[string]bool // lower-case GPU ids

	allKernels  bool            // a deny's "*" or a deny without kernels: every built-in and every right
	allBuiltins bool            // an allow rule's "*": every built-in, no right
	kernels     map[string]bool // named built-ins and rights (custom:…, observe:metrics)

	limits Limits
	class  string
	rng    hcl.Range
}

// covers reports whether the rule's GPU and kernel lists include the request.
func (r *rule) covers(kernel, gpu, uuid string) bool {
	return coversKernel(r.allKernels, r.allBuiltins, r.kernels, kernel) &&
		r.coversGPU(kernel, gpu, uuid)
}

// coversGPU reports whether the rule's GPU list includes the request's GPU.
// A host-wide right (observe:metrics) is on no GPU: gpus do not narrow it.
func (r *rule) coversGPU(kernel, gpu, uuid string) bool {
	return hostWide(kernel) || coversGPU(r.allGPUs, r.gpus, gpu, uuid)
}

// hostWide reports whether kernel names a right that concerns the whole
// host rather than one GPU.
func hostWide(kernel string) bool { return kernel == RightMetrics }

// coversEverything reports whether r names every kernel, right and GPU.
func (r *rule) coversEverything() bool { return r.allKernels && r.allGPUs }

func coversKernel(all, builtins bool, names map[string]bool, kernel string) bool {
	if kernel == "" {
		return false
	}
	if all || names[kernel] {
		return true
	}
	return builtins && isBuiltin(kernel)
}

// coversGPU takes gpu and uuid in canonical form (Request.canonicalGPU),
// as ids holds them.
func coversGPU(all bool, ids map[string]bool, gpu, uuid string) bool {
	return all || ids[gpu] || uuid != "" && ids[uuid]
}

func isCustom(kernel string) bool {
	return len(kernel) >= 7 && kernel[:7] == "custom:"
}
