# A realistic gpumesh policy for a small ML team sharing one GPU host.
#
# Read it top to bottom: groups and QoS classes, then who may do what, then
# the tests that pin the intent down. `gpumesh policy test` runs the tests,
# and `gpumesh serve` refuses this file if any of them fails.
#
# How rules combine (see `go doc github.com/gpumesh/gpumesh/policy`):
#   1. a deny block that matches always wins;
#   2. otherwise the most specific matching rule allows, and only its limits
#      and class apply: node / wg:  >  user  >  cap:  >  tag:  >  group:  >  "*"
#      (ties: the rule written first);
#   3. nothing matches: denied.
# kernels = ["*"] means every built-in kernel; running caller-supplied code
# ("custom:ptx", "custom:cuda") must be granted by name.

version = 1 # required: the policy language version

# --- Who is who -------------------------------------------------------------

group "ml" {
  # Logins (anything with an "@"), node names, tags and wg: peers may be
  # members; groups cannot contain groups.
  members = ["alice@example.com", "bob@example.com", "laptop"]
}

# --- Traffic classes --------------------------------------------------------

class "interactive" {
  dscp     = "EF" # expedited forwarding: small, latency-sensitive calls
  priority = 0    # 0 is served first, 7 last
}

class "inference" {
  dscp     = "AF41"
  priority = 1
}

class "bulk" {
  dscp     = "AF11"
  priority = 2
  rate     = "200MB/s" # bytes per second; also "1GiB/s", "800Mbit/s"
  burst    = "4MiB"
}

# --- Grants -----------------------------------------------------------------

# The team: interactive work on GPU 0, any built-in kernel.
rule "team" {
  subjects       = ["group:ml"]
  gpus           = ["0"]
  kernels        = ["*"]
  max_memory     = "8GiB"
  max_concurrent = 4
  rate           = 50
  burst          = 10
  max_request    = "64MiB"
  idle_timeout   = "10m"
  class          = "interactive"
}

# Alice maintains the kernels: she alone may load custom PTX, on GPU 0.
# Being more specific (a user beats a group), this rule's limits apply to
# all of Alice's calls that it covers, not just her custom ones.
rule "alice-custom" {
  subjects       = ["alice@example.com"]
  gpus           = ["0"]
  kernels        = ["*", "custom:ptx"]
  max_memory     = "16GiB"
  max_concurrent = 8
  class          = "interactive"
}

# CI runners: any GPU, matrix kernels only, bulk class, modest memory.
rule "ci" {
  subjects       = ["tag:ci"]
  gpus           = ["*"]
  kernels        = ["matrix_mul", "saxpy", "reduce_sum"]
  max_memory     = "2GiB"
  max_concurrent = 2
  rate           = 10
  max_request    = "16MiB"
  class          = "bulk"
}

# The inference service: one node, one GPU, two kernels, a tight quota.
rule "inference" {
  subjects       = ["inference-1"]
  gpus           = ["1"]
  kernels        = ["matrix_mul", "softmax"]
  max_memory     = "1GiB"
  max_concurrent = 1
  rate           = 5
  burst          = 1
  max_request    = "4MiB"
  idle_timeout   = "30s"
  class          = "inference"
}

# Whoever the tailnet grants the gpumesh app capability, within what the
# capability's values allow ({"kernels": [...], "gpus": [...]}).
rule "granted" {
  subjects = ["cap:gpumesh.dev/cap/gpu"]
  gpus     = ["*"]
  kernels  = ["*"]
  rate     = 20
  class    = "bulk"
}

# A workstation on the plain-WireGuard mesh (no tailnet identity).
rule "workstation" {
  subjects = ["wg:workstation"]
  gpus     = ["*"]
  kernels  = ["*", "custom:cuda"]
}

# Pods on the team's Kubernetes cluster reach this host through gpumesh's
# node agent, which joins the tailnet tagged tag:k8s and names each pod.
# The host believes those names only from the agents trusted here.
kubernetes {
  trusted_agents = ["tag:k8s"]
}

# Training pods (namespace ml, service account trainer): any built-in on
# GPU 0, each pod with its own memory and concurrency. A pod is named only
# by k8s: entries (or "*"): a rule naming tag:k8s would grant the agents'
# own connections, never their pods.
rule "ml-training" {
  subjects       = ["k8s:ml/trainer"]
  gpus           = ["0"]
  kernels        = ["*"]
  max_memory     = "4GiB"
  max_concurrent = 2
  idle_timeout   = "1h"
  class          = "bulk"
}

# --- Refusals ---------------------------------------------------------------

# Bob's old laptop was lost: whatever else names it, it gets nothing.
deny "lost-laptop" {
  subjects = ["old-laptop"]
}

# Nobody runs custom code on GPU 1, which serves inference.
deny "no-custom-on-gpu1" {
  subjects = ["*"]
  gpus     = ["1"]
  kernels  = ["custom:ptx", "custom:cuda"]
}

# --- Tests ------------------------------------------------------------------

test "team member on their laptop" {
  subject = { node = "laptop", user = "bob@example.com" }
  kernel  = "matrix_mul"
  expect  = "allow"
  rule    = "team"
  class   = "interactive"
}

test "team cannot use gpu 1" {
  subject = { node = "bobs-desktop", user = "bob@example.com" }
  kernel  = "matrix_mul"
  gpu     = "1"
  expect  = "deny"
}

test "team cannot run custom code" {
  subject = { node = "bobs-desktop", user = "bob@example.com" }
  kernel  = "custom:ptx"
  expect  = "deny"
}

test "alice may run custom ptx, with her own limits" {
  subject = { node = "alices-desktop", user = "alice@example.com" }
  kernel  = "custom:ptx"
  expect  = "allow"
  rule    = "alice-custom"
}

test "alice's built-in calls use her more specific rule" {
  subject = { node = "alices-desktop", user = "alice@example.com" }
  kernel  = "saxpy"
  expect  = "allow"
  rule    = "alice-custom"
}

test "ci runs matmul in the bulk class on any gpu" {
  subject = { node = "runner-7", tags = ["tag:ci"] }
  kernel  = "matrix_mul"
  gpu     = "1"
  expect  = "allow"
  rule    = "ci"
  class   = "bulk"
}

test "ci cannot softmax" {
  subject = { node = "runner-7", tags = ["tag:ci"] }
  kernel  = "softmax"
  expect  = "deny"
}

test "inference service on its gpu" {
  subject = { node = "inference-1", tags = ["tag:prod"] }
  kernel  = "softmax"
  gpu     = "1"
  expect  = "allow"
  rule    = "inference"
  class   = "inference"
}

test "inference service only on its gpu" {
  subject = { node = "inference-1", tags = ["tag:prod"] }
  kernel  = "softmax"
  gpu     = "0"
  expect  = "deny"
}

test "capability grants within its values" {
  subject = {
    node = "contractor"
    user = "carol@example.com"
    caps = { "gpumesh.dev/cap/gpu" = [{ kernels = ["relu"], gpus = ["0"] }] }
  }
  kernel = "relu"
  gpu    = "0"
  expect = "allow"
  rule   = "granted"
}

test "capability values narrow the rule" {
  subject = {
    node = "contractor"
    user = "carol@example.com"
    caps = { "gpumesh.dev/cap/gpu" = [{ kernels = ["relu"], gpus = ["0"] }] }
  }
  kernel = "matrix_mul"
  expect = "deny"
}

test "wireguard workstation may run custom cuda" {
  subject = { node = "workstation", wireguard = true }
  kernel  = "custom:cuda"
  expect  = "allow"
  rule    = "workstation"
}

test "a tailnet node named workstation is not the wireguard peer" {
  subject = { node = "workstation" }
  kernel  = "matrix_mul"
  expect  = "deny"
}

test "the lost laptop is refused even though bob is in ml" {
  subject = { node = "old-laptop", user = "bob@example.com" }
  kernel  = "matrix_mul"
  expect  = "deny"
  rule    = "lost-laptop"
}

test "no custom code on gpu 1, not even for the workstation" {
  subject = { node = "workstation", wireguard = true }
  kernel  = "custom:cuda"
  gpu     = "1"
  expect  = "deny"
  rule    = "no-custom-on-gpu1"
}

test "strangers are refused" {
  subject = { node = "stranger" }
  kernel  = "matrix_mul"
  expect  = "deny"
}

test "a training pod on gpu 0" {
  subject = { k8s = "ml/trainer", pod = "trainer-0", node = "k8s-node-1", tags = ["tag:k8s"] }
  kernel  = "matrix_mul"
  expect  = "allow"
  rule    = "ml-training"
  class   = "bulk"
}

test "another service account of ml is not a trainer" {
  subject = { k8s = "ml/notebook", node = "k8s-node-1", tags = ["tag:k8s"] }
  kernel  = "matrix_mul"
  expect  = "deny"
}
