// Package policy is gpumesh's access policy: which caller may run which
// kernels on which GPU, with what quotas, and which QoS class their traffic
// gets. A policy file is parsed, validated and compiled once into an
// immutable *Policy; Evaluate is then a pure function of (subject, request)
// to a Decision that names the deciding rule and says why.
//
// policy imports no overlay, GPU or QoS code. It computes limits; the
// server (gpusvc) enforces them. It fails closed: a nil, empty, invalid or
// untested-and-failing policy denies, and allow-all exists only as
// AllowAllForTest.
//
// # Files
//
// One schema, two syntaxes chosen by extension: HCL (.hcl) and JSON (.json,
// HCL's JSON form, where each block is an object keyed by block type, then by
// label). Unknown keys are errors, every error names file:line:col, and the
// file must start with its language version:
//
//	version = 1
//
// # Subjects
//
// A subject entry names callers, as the overlay identified them:
//
//	"laptop", "node:laptop"      a tailnet node, by short name
//	"alice@example.com",
//	"user:alice@example.com"     a user, by the login the control server reports
//	"alice@", "user:alice"       a user whose login has no domain
//	"tag:ci"                     nodes carrying a tailnet tag
//	"group:ml"                   the members of a group defined in this file
//	"cap:gpumesh.dev/cap/gpu"    callers the tailnet grants this app capability
//	"wg:workstation"             a static WireGuard peer (plain WireGuard mode)
//	"k8s:ml/trainer"             Kubernetes pods of namespace ml running as
//	                             service account trainer (see Kubernetes)
//	"k8s:ml/*"                   every pod of namespace ml
//	"*"                          any identified caller, pods included
//
// Names, logins and tags compare case-insensitively; capability names
// exactly. WireGuard peers are their own namespace: "laptop" never matches a
// WireGuard peer called laptop, only "wg:laptop" does.
//
// A user entry matches the login the control server reports for the
// caller's (untagged) node. Tailscale reports an email-like login
// ("alice@example.com", "alice@github"); Headscale reports the user's email
// when it has one (OIDC, or `users create --email`), else its bare name
// ("alice" for `headscale users create alice`). Write a login with a domain
// as it is; a login without one as "user:alice" or, as Headscale's own
// policy spells it, "alice@" (the trailing "@" is dropped). An entry is a
// user when it has the user: prefix or contains "@"; a bare word without
// "@" ("alice") is always a node name, never a user.
//
// # Node names can be reused
//
// A node name is whatever device holds it now. Control servers keep names
// unique only among the nodes that exist: when a node is deleted or
// expires, another device, possibly someone else's, can join under the
// freed name and inherit every rule that names it. A node can also rename
// itself, so a deny by node name is not a revocation (expire or delete the
// node in the control server for that). For anything sensitive (custom
// code, resident buffers, observe:metrics, generous limits) name callers by
// tag (assigned by the tailnet's admins), user or capability, which a new
// device cannot take over by choosing a name; `gpumesh policy check` warns
// when a rule grants such rights through a node name. "wg:" peers are bound
// to their keys in the WireGuard configuration and are not affected.
//
//	group "ml" {
//	  members = ["alice@example.com", "laptop", "tag:ml-runner"]
//	}
//
// Groups hold any subject entry but another group or "*".
//
// # Kubernetes
//
// Pods reach a host through gpumesh's Kubernetes agent, which names each
// pod (namespace, service account, name, UID, from the Kubernetes API) at
// the start of the connection it forwards. The host believes it only from
// the agents this block trusts, by tag (or wg: peer); a trusted agent's
// connection without that preface is refused, and so is anyone else's
// with one:
//
//	kubernetes {
//	  trusted_agents = ["tag:k8s"]
//	}
//
// A pod is named only by k8s: entries, groups holding them and "*": rules
// naming its agent (tag:k8s, the node) grant the pod nothing (and `policy
// check` warns about allow rules naming a trusted agent's tag), but denies
// naming the agent refuse its pods too. A trusted agent's own connections
// (it probes the host) may ask Devices and Explain without a rule.
// Sessions, buffers and quotas are the pod's own; deleting the pod frees
// them at once. In tests: subject = { k8s = "ml/trainer", pod = "trainer-0",
// node = "k8s-node-1", tags = ["tag:k8s"] }.
//
// # QoS classes
//
//	class "interactive" { dscp = "EF"   priority = 0 }
//	class "bulk"        { dscp = "AF11" priority = 2  rate = "200MB/s"  burst = "4MiB" }
//
// dscp (required) is a name (CS0–CS7, AF11–AF43, EF, VA, LE, BE) or a number
// 0–63; priority is 0 (most urgent) to 7, default 0; rate is bytes per second
// ("200MB/s", "1GiB/s", "800Mbit/s" or a number) and burst a size, both
// optional. A caller's class comes from the rule that allowed it; callers
// whose rule names none use the default class.
//
// # Rules
//
//	rule "team" {
//	  subjects       = ["group:ml", "tag:ci"]
//	  gpus           = ["0"]                     # index, UUID ("GPU-…"), or "*"
//	  kernels        = ["matrix_mul", "saxpy"]   # built-ins, "*", or a right by name
//	  max_memory     = "2GiB"   # device memory the caller may hold
//	  max_concurrent = 4        # calls in flight
//	  rate           = 50       # calls per second …
//	  burst          = 10       # … with this bucket (default: ceil(rate))
//	  max_request    = "64MiB"  # request size (default: the server's)
//	  idle_timeout   = "10m"    # session idle timeout (default: the server's)
//	  class          = "interactive"
//	}
//
// subjects, gpus and kernels are required; the limits are optional and mean
// "unlimited" (or the server's default) when left out.
//
// A GPU is named one way: an index in decimal without sign, spaces or
// leading zeros ("0", "12"; the file refuses "00" or "+1" and says how to
// write it), or its UUID as NVML reports it ("GPU-…", "MIG-…", compared in
// lower case). A rule may name a GPU either way and means the same device:
// the server resolves each request to the GPU's index and UUID before
// asking (Request.GPU and Request.GPUUUID). A request for GPU "" means GPU
// "0"; a request GPU in any other form ("00", "+0", "-0", " 0") matches no
// rule, "*" included, and is denied.
//
// # What "*" means in kernels
//
// A caller can get: the built-in kernels; three rights, each granted only by
// naming it ("custom:ptx" and "custom:cuda" to load and launch its own code,
// "observe:metrics" to read the host's metrics over the overlay); and
// resident buffers on a GPU, which the server grants whenever the policy
// allows the caller any built-in or custom kernel on that GPU.
//
//   - In an allow rule, kernels = ["*"] is every built-in kernel and nothing
//     more: no custom code, no metrics. Rights are granted by name only.
//   - In a deny block, kernels = ["*"] is everything a caller could get:
//     every built-in, every right, and so resident buffers too. A deny
//     without kernels means the same.
//
// observe:metrics concerns the whole host, not one GPU: a rule's gpus do
// not narrow it, and any deny whose kernels cover it refuses it, whatever
// GPUs that deny names.
//
//	deny "stranger" {
//	  subjects = ["stranger", "tag:quarantine"]
//	  # gpus and kernels are optional here; left out they mean everything,
//	  # custom code, metrics and buffers included (as does kernels = ["*"]).
//	}
//
// # How rules combine
//
// A rule matches a request when its subjects name the caller and its gpus
// and kernels include the request. Then:
//
//  1. If any deny block matches, the call is denied, whatever allows it.
//     A deny can be reviewed on its own: nothing elsewhere can undo it.
//  2. Otherwise the most specific matching rule allows the call, and its
//     limits and class apply (limits are never merged across rules).
//     Specificity is that of the subject entry that named the caller:
//     node or wg:  >  user  >  cap:  >  tag:  >  group:  >  "*".
//     A group entry counts as group whatever member matched. Between
//     equally specific rules, the one written first wins.
//  3. If no rule matches, the call is denied (default deny).
//
// Rules only grant: a specific rule that does not cover a kernel does not
// take away what a broader rule grants for that kernel; use deny for that.
//
// # App capabilities
//
// A "cap:NAME" entry names callers whose WhoIs carries the app capability
// NAME (granted in the tailnet's own policy). The capability's values may
// narrow the rule further; each value is a JSON object
//
//	{"kernels": ["matrix_mul", "*", "custom:ptx"], "gpus": ["0", "*"]}
//
// where both fields are optional and use the rule syntax. A rule that
// matched through a cap: entry allows a request only if the rule covers it
// AND at least one value permits it (no values at all: no narrowing). A
// value that is not an object, has other fields or wrong types permits
// nothing, so an unknown restriction can never widen access. In deny blocks
// the capability's presence is enough; its values are ignored.
//
// # Tests
//
// Test blocks state what the policy must decide; `gpumesh policy test` runs
// them, and a server refuses (LoadChecked, Store) a policy whose tests fail.
//
//	test "laptop can matmul" {
//	  subject = { node = "laptop", user = "alice@example.com", tags = [] }
//	  kernel  = "matrix_mul"
//	  gpu     = "0"            # optional, default "0"
//	  expect  = "allow"        # or "deny"
//	  rule    = "team"         # optional: the rule that must decide
//	  class   = "interactive"  # optional: the class that must apply
//	}
//
// subject fields: node ("wg:NAME" for a WireGuard peer), user, tags,
// caps ({ "NAME" = [ {kernels = […]} ] }) and wireguard (bool). Other test
// fields: gpu_uuid and bytes.
package policy
