package policy

import (
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/gpumesh/gpumesh/dscp"
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
}

// String names the subject the way decisions' reasons do: "wg:NAME" for a
// WireGuard peer, else the node name, else the user, else the first tag.
func (s Subject) String() string {
	switch {
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
	return s.Node == "" && s.User == "" && len(s.Tags) == 0 && len(s.Caps) == 0
}

// Request is what they ask for.
type Request struct {
	Kernel string // built-in name ("matrix_mul", "saxpy", ...), or "custom:ptx" / "custom:cuda"
	GPU    string // "0", "1", a GPU UUID, or "" meaning the default GPU 0
	// GPUUUID optionally gives the UUID of the same GPU when GPU is an
	// index, so that rules naming either form match. May be empty.
	GPUUUID string
	// Bytes is the request size in bytes (0 when unknown). Evaluate does
	// not deny on size: the server compares it with Limits.MaxRequestBytes
	// and answers with a quota error naming the limit.
	Bytes int64
}

// gpu returns the requested GPU with "" mapped to the default "0".
func (r Request) gpu() string {
	if r.GPU == "" {
		return "0"
	}
	return r.GPU
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

	idx index
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

// The custom-code rights. A rule's kernels = ["*"] covers every built-in but
// neither of these: running caller-supplied code must be granted by name.
const (
	KernelCustomPTX  = "custom:ptx"
	KernelCustomCUDA = "custom:cuda"
)

var builtinKernels = []string{"matrix_mul", "reduce_sum", "relu", "saxpy", "softmax", "transpose"}

// BuiltinKernels returns the built-in kernel names a policy may name, sorted.
func BuiltinKernels() []string { return slices.Clone(builtinKernels) }

// rule is a compiled rule or deny block.
type rule struct {
	name     string
	deny     bool
	order    int // position among rules of its kind, in file order
	subjects []subjectRef

	allGPUs bool
	gpus    map[string]bool // lower-case GPU ids

	allKernels  bool            // deny without kernels: everything, custom code included
	allBuiltins bool            // "*"
	kernels     map[string]bool // named built-ins and custom:… rights

	limits Limits
	class  string
	rng    hcl.Range
}

// covers reports whether the rule's GPU and kernel lists include the request.
func (r *rule) covers(kernel, gpu, uuid string) bool {
	return coversKernel(r.allKernels, r.allBuiltins, r.kernels, kernel) &&
		coversGPU(r.allGPUs, r.gpus, gpu, uuid)
}

func coversKernel(all, builtins bool, names map[string]bool, kernel string) bool {
	if kernel == "" {
		return false
	}
	if all || names[kernel] {
		return true
	}
	return builtins && !isCustom(kernel)
}

func coversGPU(all bool, ids map[string]bool, gpu, uuid string) bool {
	if all {
		return true
	}
	if ids[lower(gpu)] {
		return true
	}
	return uuid != "" && ids[lower(uuid)]
}

func isCustom(kernel string) bool {
	return len(kernel) >= 7 && kernel[:7] == "custom:"
}
