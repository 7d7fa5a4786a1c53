#!/usr/bin/env bash
# Build the Kubernetes control plane pinned in tools/kubernetes/go.mod
# (kube-apiserver, kube-scheduler, kube-controller-manager v1.37.2 and etcd)
# into .tools/bin/, for the tests in kube/ that run it on loopback
# (kube/kubetest).
#
# Cached: nothing is done when every binary exists and is newer than the tools
# module's go.mod, go.sum, tools.go and etcd/main.go. FORCE=1 rebuilds. A cold
# build takes about 7 minutes on 2 cores (the apiserver most of it) and needs
# the Go module proxy (or a warm module cache).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tools/kubernetes"
out="${KUBE_TOOLS_BIN:-$root/.tools/bin}"

# binary name -> package path, built in this order (the apiserver warms the
# cache for the others).
bins=(
	"kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver"
	"kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler"
	"kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager"
	"etcd ./etcd"
)

fresh() {
	local b="$1" src
	[ -x "$b" ] || return 1
	for src in "$mod/go.mod" "$mod/go.sum" "$mod/tools.go" "$mod/etcd/main.go"; do
		[ "$b" -nt "$src" ] || return 1
	done
}

stale=()
for entry in "${bins[@]}"; do
	name="${entry%% *}"
	if [ "${FORCE:-0}" = 1 ] || ! fresh "$out/$name"; then
		stale+=("$entry")
	fi
done
if [ "${#stale[@]}" = 0 ]; then
	echo "kube-tools: $out/{kube-apiserver,kube-scheduler,kube-controller-manager,etcd} are up to date"
	exit 0
fi

mkdir -p "$out"
cd "$mod"
for entry in "${stale[@]}"; do
	name="${entry%% *}"
	pkg="${entry#* }"
	echo "kube-tools: building $name ($pkg) into $out/$name ($(date -u +%T))"
	tmp="$out/$name.tmp.$$"
	trap 'rm -f "$tmp"' EXIT
	GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -trimpath -o "$tmp" "$pkg"
	mv -f "$tmp" "$out/$name"
	trap - EXIT
done
echo "kube-tools: built ${#stale[@]} binaries into $out ($(date -u +%T))"
