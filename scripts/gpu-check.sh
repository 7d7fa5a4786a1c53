#!/bin/sh
# gpu-check.sh — check gpumesh on a machine with an NVIDIA GPU and driver,
# from prebuilt binaries (no Go toolchain needed). Build them anywhere with
# the CUDA headers (`make gpu-bundle`), carry bin/ over, then:
#
#   scripts/gpu-check.sh            (or BIN=/path/to/bin scripts/gpu-check.sh)
#
# Needs in $BIN: gpumesh, gpumesh-gpu (-tags cuda), cuda.test
# (go test -c -tags cuda ./gpusvc/cuda), worker.test (go test -c
# ./gpusvc/worker). Checks, each of which must hold:
#   1. the CUDA worker starts and sees the GPU (gpumesh-gpu --probe)
#   2. the CUDA backend's tests: built-ins against the CPU, f16/bf16 matmul,
#      buffers, a PTX upload + launch, an NVRTC-compiled kernel, a faulting
#      kernel losing its context
#   3. a faulting kernel through supervised workers hurts only its caller
#   4. NVML telemetry (gpumesh gpus)
#   5. matmul TFLOP/s locally (resident buffers) and through the endpoint on
#      loopback (gpumesh serve --backend cuda over a WireGuard mesh on
#      127.0.0.1, gpumesh run)
# It stops at the first failure with a line starting "gpu-check: FAIL".
#
# GPU_CHECK_DRY=1 checks the script itself on a machine without a GPU: only
# step 5b, with the stand-in worker (CPU inside); needs gpumesh and a
# gpumesh-gpu built with or without the cuda tag.
set -eu
DRY=${GPU_CHECK_DRY:-}

BIN=${BIN:-bin}
SIZE=${SIZE:-2048}        # matrix side through the endpoint
BENCHTIME=${BENCHTIME:-20x}

fail() { echo "gpu-check: FAIL: $*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }

need="gpumesh gpumesh-gpu cuda.test worker.test"
[ -n "$DRY" ] && need="gpumesh gpumesh-gpu"
for b in $need; do
	[ -x "$BIN/$b" ] || fail "$BIN/$b is missing (make gpu-bundle builds them)"
done
BIN=$(cd "$BIN" && pwd)
work=$(mktemp -d)
serve_pid=
cleanup() {
	[ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

backend_flags="--backend cuda"
want_backend="backend cuda"
if [ -n "$DRY" ]; then
	echo "gpu-check: DRY RUN with the stand-in worker: no GPU is checked"
	backend_flags="--backend auto --gpu-worker-arg=--stand-in"
	want_backend="backend stand-in"
	SIZE=${GPU_CHECK_DRY_SIZE:-256}
else

step "0. host"
uname -a
command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "(no nvidia-smi)"

step "1. the CUDA worker starts and sees the GPU"
"$BIN/gpumesh-gpu" --probe || fail "gpumesh-gpu --probe: the CUDA worker cannot start here (see its message above)"
"$BIN/gpumesh-gpu" --probe | grep -q '^backend cuda' || fail "gpumesh-gpu --probe: backend is not cuda"

step "2. CUDA backend tests (PTX upload + launch, NVRTC kernel, faulting kernel, built-ins vs CPU)"
"$BIN/cuda.test" -test.v -test.count=1 -test.run . >"$work/cuda.out" 2>&1 || { cat "$work/cuda.out"; fail "CUDA backend tests"; }
grep -E '^(=== RUN|--- |    cuda_test)|nvrtc' "$work/cuda.out" | grep -v '=== RUN' | head -n 40
grep -q -- '--- PASS: TestPTXAndNVRTCModules' "$work/cuda.out" || fail "PTX/NVRTC module test did not pass"
if grep -q 'CUDA C skipped' "$work/cuda.out"; then
	fail "no NVRTC library found: install libnvrtc (CUDA 11.2+, 12 or 13) or set NVRTC_LIBRARY"
fi
grep -q -- '--- PASS: TestFaultLosesTheContext' "$work/cuda.out" || fail "fault test did not pass"

step "3. a faulting kernel hurts only its caller (supervised workers)"
GPUMESH_WORKER_BIN="$BIN/gpumesh-gpu" "$BIN/worker.test" -test.v -test.count=1 \
	-test.run 'TestCUDAFaultHurtsOnlyItsCaller' >"$work/worker.out" 2>&1 || { cat "$work/worker.out"; fail "fault isolation"; }
grep -E -- '--- |alice|backend|device' "$work/worker.out" | grep -v 'level=' || true
grep -q -- '--- PASS: TestCUDAFaultHurtsOnlyItsCaller' "$work/worker.out" || fail "fault isolation test did not run"

step "4. NVML telemetry"
"$BIN/gpumesh" gpus | tee "$work/gpus.out" || fail "gpumesh gpus"
grep -q 'no NVIDIA GPU' "$work/gpus.out" && fail "gpumesh gpus sees no GPU through NVML"
grep -q 'GPU-' "$work/gpus.out" || fail "gpumesh gpus lists no GPU UUID"

step "5a. matmul on the GPU, locally (resident buffers, ${BENCHTIME})"
"$BIN/cuda.test" -test.run '^$' -test.bench BenchmarkMatMul -test.benchtime "$BENCHTIME" >"$work/bench.out" 2>&1 || { cat "$work/bench.out"; fail "matmul benchmark"; }
grep TFLOP "$work/bench.out" || fail "matmul benchmark printed no TFLOP/s"
local_tflops=$(awk '/BenchmarkMatMul\/float32/ { for (i = 1; i < NF; i++) if ($(i+1) == "TFLOP/s") print $i }' "$work/bench.out")
fi

step "5b. matmul through the endpoint on loopback (${SIZE}x${SIZE} float32, inline data)"
host_key=$("$BIN/gpumesh" keygen); laptop_key=$("$BIN/gpumesh" keygen)
host_pub=$(echo "$host_key" | "$BIN/gpumesh" pubkey); laptop_pub=$(echo "$laptop_key" | "$BIN/gpumesh" pubkey)
port=$(( 40000 + $$ % 20000 ))
cat >"$work/host.conf" <<CONF
[Interface]
# Name = gpu-host
PrivateKey = $host_key
Address = 10.77.0.1/24
ListenPort = $port

[Peer]
# Name = laptop
PublicKey = $laptop_pub
AllowedIPs = 10.77.0.2/32
CONF
cat >"$work/laptop.conf" <<CONF
[Interface]
# Name = laptop
PrivateKey = $laptop_key
Address = 10.77.0.2/24

[Peer]
# Name = gpu-host
PublicKey = $host_pub
AllowedIPs = 10.77.0.1/32
Endpoint = 127.0.0.1:$port
CONF
cat >"$work/policy.hcl" <<'POL'
version = 1
rule "laptop" {
  subjects = ["wg:laptop"]
  kernels  = ["*"]
  gpus     = ["*"]
}
POL
chmod 600 "$work"/*.conf
# shellcheck disable=SC2086 # backend_flags is a list
"$BIN/gpumesh" serve --wg "$work/host.conf" --policy "$work/policy.hcl" $backend_flags \
	--gpu-worker "$BIN/gpumesh-gpu" --max-request 1GiB >"$work/serve.out" 2>&1 &
serve_pid=$!
run() { "$BIN/gpumesh" run gpu-host matrix_mul --size "$SIZE" --wg "$work/laptop.conf" --join-timeout 20s "$@"; }
tries=0
until run --check=true >"$work/run.out" 2>&1; do
	tries=$((tries + 1))
	kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.out"; fail "gpumesh serve exited"; }
	[ "$tries" -lt 30 ] || { cat "$work/serve.out" "$work/run.out"; fail "no checked result through the endpoint"; }
	sleep 1
done
grep -q "$want_backend" "$work/serve.out" || { cat "$work/serve.out"; fail "serve is not on the expected backend ($want_backend)"; }
cat "$work/run.out"
run --check=false >"$work/run.out" 2>&1 || { cat "$work/run.out"; fail "timed run through the endpoint"; }
cat "$work/run.out"
# "round trip 412.3ms (compute 3.1ms)": Go durations to seconds.
secs() { awk -v d="$1" 'BEGIN {
	if (d ~ /µs$/) { sub(/µs$/, "", d); print d / 1e6 } else if (d ~ /ms$/) { sub(/ms$/, "", d); print d / 1e3 }
	else if (d ~ /m[0-9.]+s$/) { split(d, a, "m"); sub(/s$/, "", a[2]); print a[1] * 60 + a[2] } else { sub(/s$/, "", d); print d + 0 } }'; }
rt=$(sed -n 's/.*round trip \([^ ]*\) (compute \([^)]*\)).*/\1/p' "$work/run.out")
ct=$(sed -n 's/.*round trip \([^ ]*\) (compute \([^)]*\)).*/\2/p' "$work/run.out")
[ -n "$rt" ] && [ -n "$ct" ] || fail "cannot read the timings from: $(cat "$work/run.out")"
flop=$(awk -v n="$SIZE" 'BEGIN { print 2 * n * n * n }')
printf '\nmatmul float32 TFLOP/s:\n'
printf '  local, resident buffers, 4096^3:              %s\n' "${local_tflops:-?}"
awk -v f="$flop" -v t="$(secs "$ct")" -v n="$SIZE" 'BEGIN { printf "  endpoint, compute only (%dx%d):              %.3f\n", n, n, f / t / 1e12 }'
awk -v f="$flop" -v t="$(secs "$rt")" -v n="$SIZE" 'BEGIN { printf "  endpoint, round trip with inline data (%d):  %.3f\n", n, f / t / 1e12 }'

[ -n "$DRY" ] && { printf '\ngpu-check: DRY RUN PASSED (stand-in worker; no GPU checked)\n'; exit 0; }
printf '\ngpu-check: ALL PASSED\n'
