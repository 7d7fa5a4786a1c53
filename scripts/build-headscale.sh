#!/usr/bin/env bash
# Build the Headscale control server pinned in tools/headscale/go.mod into
# .tools/bin/headscale, for the end-to-end tests in e2e/headscale.
#
# Cached: nothing is done when the binary exists and is newer than
# tools/headscale/go.mod and go.sum. FORCE=1 rebuilds. A cold build takes a few
# minutes on 2 cores and needs the Go module proxy (or a warm module cache).
#
# `go install github.com/juanfont/headscale/cmd/headscale@v0.29.1` does not
# work (the proxy refuses the module's version list), hence the tools module.
# github.com/tailscale/tailsql is not in the checksum database.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tools/headscale"
out="${HEADSCALE_BIN:-$root/.tools/bin/headscale}"

if [ "${FORCE:-0}" != 1 ] && [ -x "$out" ] && [ "$out" -nt "$mod/go.mod" ] && [ "$out" -nt "$mod/go.sum" ]; then
	echo "headscale: $out is up to date ($("$out" version 2>/dev/null | head -n1 || echo '?'))"
	exit 0
fi

mkdir -p "$(dirname "$out")"
echo "headscale: building $(sed -n 's/^require github.com\/juanfont\/headscale \(.*\)$/\1/p' "$mod/go.mod") into $out"
cd "$mod"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}github.com/tailscale/tailsql" \
	GOFLAGS="${GOFLAGS:-} -mod=readonly" \
	go build -trimpath -o "$tmp" github.com/juanfont/headscale/cmd/headscale
mv -f "$tmp" "$out"
trap - EXIT
echo "headscale: built $("$out" version 2>/dev/null | head -n1 || echo "$out")"
