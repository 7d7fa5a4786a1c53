#!/usr/bin/env bash
# Build grpcurl, pinned in tools/grpcurl/go.mod, into .tools/bin/grpcurl: the
# gRPC command-line client that tests drive through a forwarder (server
# reflection, health, `list` and `describe`).
#
# Cached: nothing is done when the binary exists and is newer than
# tools/grpcurl/go.mod and go.sum. FORCE=1 rebuilds. A cold build takes about
# 30 s and needs the Go module proxy (or a warm module cache).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tools/grpcurl"
out="${GRPCURL_BIN:-$root/.tools/bin/grpcurl}"

if [ "${FORCE:-0}" != 1 ] && [ -x "$out" ] && [ "$out" -nt "$mod/go.mod" ] && [ "$out" -nt "$mod/go.sum" ]; then
	echo "grpcurl: $out is up to date ($("$out" -version 2>&1 | head -n1 || echo '?'))"
	exit 0
fi

mkdir -p "$(dirname "$out")"
echo "grpcurl: building $(sed -n 's/^require github.com\/fullstorydev\/grpcurl \(.*\)$/\1/p' "$mod/go.mod") into $out"
cd "$mod"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# -X main.version: grpcurl reports "dev build" otherwise.
version="$(sed -n 's/^require github.com\/fullstorydev\/grpcurl \(.*\)$/\1/p' go.mod)"
GOFLAGS="${GOFLAGS:-} -mod=readonly" \
	go build -trimpath -ldflags "-X main.version=$version" -o "$tmp" github.com/fullstorydev/grpcurl/cmd/grpcurl
mv -f "$tmp" "$out"
trap - EXIT
echo "grpcurl: built $("$out" -version 2>&1 | head -n1 || echo "$out")"
