# The demo policy served by gpu-host in `gpumesh demo`.
#
# laptop may run every built-in kernel on every GPU, and its traffic is
# marked EF and scheduled first. stranger has no rule, so it is refused
# (default deny). Nobody may run custom PTX or CUDA.
#
# Check it:   gpumesh policy check examples/policy.hcl
# Test it:    gpumesh policy test examples/policy.hcl
# Ask it:     gpumesh policy explain examples/policy.hcl --as laptop --kernel matrix_mul

version = 1

class "interactive" {
  dscp     = "EF"
  priority = 0
}

rule "laptop" {
  subjects       = ["laptop"]
  gpus           = ["*"]
  kernels        = ["matrix_mul", "saxpy", "*"] # "*" is every built-in, never custom code
  max_memory     = "4GiB"
  max_concurrent = 8
  rate           = 200
  burst          = 50
  max_request    = "256MiB"
  idle_timeout   = "10m"
  class          = "interactive"
}

test "laptop can matmul" {
  subject = { node = "laptop" }
  kernel  = "matrix_mul"
  gpu     = "0"
  expect  = "allow"
  rule    = "laptop"
  class   = "interactive"
}

test "laptop can saxpy on any gpu" {
  subject = { node = "laptop" }
  kernel  = "saxpy"
  gpu     = "1"
  expect  = "allow"
}

test "laptop can run the other built-ins" {
  subject = { node = "laptop" }
  kernel  = "softmax"
  expect  = "allow"
}

test "laptop cannot run custom ptx" {
  subject = { node = "laptop" }
  kernel  = "custom:ptx"
  expect  = "deny"
}

test "stranger is refused" {
  subject = { node = "stranger" }
  kernel  = "matrix_mul"
  gpu     = "0"
  expect  = "deny"
}
