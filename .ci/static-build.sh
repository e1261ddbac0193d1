#!/usr/bin/env bash
# Builds the static musl binary ("copy this one file to the edge host"), checks that it is
# static and that it serves, then runs a short smoke version of the load benchmark with it.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
# ring (rustls, for alerts over HTTPS and SMTP) compiles C and assembly for the target: musl-gcc
# from Debian's musl-tools (.ci/install-tools.sh installs it).
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
# The linker map says how much of .cargo/link-order.txt this build found (a stale list, after
# a dependency or compiler update, costs idle memory: benches/link-order.sh regenerates it).
map="$PWD/target/$target/release/forge.map"
FORGE_LINK_MAP="$map" cargo build --release --target "$target" --quiet
bin="target/$target/release/forge"
mine() { awk -v t="$target" '/^#/ { here = ($2 == t); next } here' .cargo/link-order.txt | sort -u; }
in_map() {
  { grep -o ':(\.text\.[^)]*)' "$map" | sed -E 's/^:\(\.text\.((unlikely|hot|startup|exit)\.)?//; s/\)$//'
    awk 'NF == 5 { print $5 }' "$map"; } | sort -u
}
listed=$(mine | wc -l)
found=$(comm -12 <(mine) <(in_map) | wc -l)
echo "static build: link order: $found of the $listed functions .cargo/link-order.txt lists for $target are in this build"

description=$(file -b "$bin")
echo "static build: $description"
case "$description" in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) echo "static build: not a static executable"; exit 1 ;;
esac
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "static build: ldd lists shared libraries"; ldd "$bin"; exit 1
fi
echo "static build: $(stat -c %s "$bin") bytes"

work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin" serve --listen "127.0.0.1:$port" --db "$work/forge.redb" >"$work/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 50); do
  if [ "$(curl -s "http://127.0.0.1:$port/api/ping")" = pong ]; then
    echo "static build: serves /api/ping"
    kill $pid; wait $pid || true
    FORGE_BIN="$bin" benches/load.sh --smoke
    exit 0
  fi
  sleep 0.1
done
echo "static build: no answer on /api/ping"; cat "$work/log"; exit 1
