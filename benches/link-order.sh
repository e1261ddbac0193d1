#!/usr/bin/env bash
# Regenerates .cargo/link-order.txt, the order .cargo/forge-linker lays the forge binary's
# functions out in (why: see that wrapper's header).
#
#   benches/link-order.sh [TARGET...]   # default: x86_64-unknown-linux-musl x86_64-unknown-linux-gnu
#
# For each target it builds the release binary as shipped (stripped, without the current order)
# with a linker map, runs it under callgrind (valgrind) through the start-up of load.sh (empty
# db, admin created, first ping answered: the "idle" state), dumps, then through the hot
# requests (login, tokens, Bearer /api/user, projects, templates, task launches with output,
# tasks/last, the output window) until a clean stop. Every function executed is found in the
# map by its address. The list is the start-up functions, then the hot ones not already listed,
# each group in the address order of the default layout, as symbol names without their hash.
# Needs valgrind (callgrind_control) and curl; musl-gcc for the musl target.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- x86_64-unknown-linux-musl x86_64-unknown-linux-gnu
command -v callgrind_control >/dev/null || { echo "link-order.sh: valgrind is required"; exit 1; }

work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")

profile() {
  local target=$1 out=$2
  # A stable path: the build links again only when something changed (the map stays valid).
  local map="$target_dir/link-order-$target.map" bin="$target_dir/$target/release/forge"
  local args=(--target "$target")
  if [ "$target" = "$(rustc -vV | sed -n 's/^host: //p')" ]; then
    bin="$target_dir/release/forge" args=()   # the plain `cargo build --release` binary
  fi
  echo "link-order: building $target (no order, with a map)"
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  # build.rs makes cargo link again when FORGE_LINK_MAP or FORGE_LINK_ORDER change.
  FORGE_LINK_ORDER=off FORGE_LINK_MAP="$map" cargo build --release --bin forge "${args[@]}" --quiet
  [ -f "$map" ] || { echo "link-order: the linker wrote no map"; exit 1; }

  local port=$((20000 + RANDOM % 20000)) db="$out/db"
  local base="http://127.0.0.1:$port"
  mkdir -p "$db/repo"
  printf 'for i in $(seq 1 200); do echo "line $i"; done\n' >"$db/repo/run.sh"
  echo "link-order: running $target under callgrind"
  FORGE_ADMIN=admin FORGE_ADMIN_PASSWORD=changeme FORGE_LOG=warn FORGE_LOCAL_REPO_ROOTS="$db" \
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" --dump-instr=yes \
    --compress-strings=no --compress-pos=no "$bin" serve --listen "127.0.0.1:$port" --db "$db/forge.redb" \
    >"$out/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 600); do curl -sf "$base/api/ping" >/dev/null && break; sleep 0.1; done
  curl -sf "$base/api/ping" >/dev/null || { cat "$out/server.log"; exit 1; }
  callgrind_control --dump=startup "$server" >/dev/null

  curl -sf -c "$db/cookie" -XPOST -d '{"auth":"admin","password":"changeme"}' "$base/api/auth/login"
  local token
  token=$(curl -sf -b "$db/cookie" -XPOST "$base/api/user/tokens" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  local auth="Authorization: Bearer $token"
  curl -sf -H "$auth" "$base/api/user" >/dev/null
  curl -sf -H "$auth" -XPOST -d '{"name":"p"}' "$base/api/projects" >/dev/null
  curl -sf -H "$auth" -XPOST -d "{\"name\":\"r\",\"project_id\":1,\"git_url\":\"$db/repo\",\"ssh_key_id\":1}" \
    "$base/api/project/1/repositories" >/dev/null
  curl -sf -H "$auth" -XPOST -d '{"name":"t","project_id":1,"app":"bash","playbook":"run.sh","repository_id":1}' \
    "$base/api/project/1/templates" >/dev/null
  for _ in 1 2 3; do
    curl -sf -H "$auth" -XPOST -d '{"template_id":1}' "$base/api/project/1/tasks" >/dev/null
  done
  for _ in $(seq 1 300); do
    curl -sf -H "$auth" "$base/api/project/1/tasks/3" | grep -q '"status":"success"' && break
    sleep 0.1
  done
  for path in /api/user /api/projects /api/project/1/tasks/last /api/project/1/tasks \
    /api/project/1/tasks/3/output /api/project/1/templates /api/ping; do
    curl -sf -H "$auth" "$base$path" >/dev/null
    curl -sf -H "$auth" "$base$path" >/dev/null
  done
  kill -TERM "$server"
  wait "$server" || true
  server=""

  python3 - "$map" "$bin" "$out/cg".* "$out/cg" >"$out/order" <<'PY'
import bisect, re, sys

map_path, binary, startup_dump, rest_dump = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[-1]
sections, symbols = [], []   # (start, end, name or None), (address, name)
for line in open(map_path):
    fields = line.split()
    if len(fields) < 5 or not re.fullmatch(r"[0-9a-f]+", fields[0]):
        continue
    start, size = int(fields[0], 16), int(fields[2], 16)
    last = fields[-1]
    if len(fields) >= 6 or ":(" in last:
        m = re.search(r":\((\.text[^)]*)\)$", last)
        if m:
            name = m.group(1)
            # .text.<symbol>, or .text.unlikely.<symbol> (and hot., startup., exit.) for code
            # LLVM placed by temperature; a bare .text holds several functions (C, assembly).
            symbol = re.sub(r"^\.text\.((unlikely|hot|startup|exit)\.)?", "", name)
            sections.append((start, start + size, symbol if symbol != name else None))
    elif len(fields) == 5 and not last.startswith("."):
        symbols.append((start, last))
sections.sort()
symbols.sort()
starts = [s[0] for s in sections]
sym_at = [s[0] for s in symbols]

def functions(dump):
    """Every function of the binary with an instruction executed in this dump (--dump-instr:
    each cost line starts with an instruction's address, in the object of the `ob=` above)."""
    found, ours = {}, False
    for line in open(dump):
        if line.startswith("ob="):
            ours = line[3:].strip().endswith("/" + binary.rsplit("/", 1)[-1])
        elif ours and line.startswith("0x"):
            address = int(line.split()[0], 16)
            i = bisect.bisect_right(starts, address) - 1
            if i < 0 or address >= sections[i][1]:
                continue
            name = sections[i][2]
            if name is None:
                j = bisect.bisect_right(sym_at, address) - 1
                if j < 0 or symbols[j][0] < sections[i][0]:
                    continue
                name = symbols[j][1]
            found.setdefault(name, sections[i][0])
    return found

startup = functions(startup_dump)
hot = {n: a for n, a in functions(rest_dump).items() if n not in startup}
for group in (startup, hot):
    for name in sorted(group, key=group.get):
        print(name)
PY
  [ -s "$out/order" ] || { echo "link-order: $target: no function of the binary in the profile"; exit 1; }
  echo "link-order: $target: $(wc -l <"$out/order") functions"
}

for target in "$@"; do
  mkdir -p "$work/$target"
  profile "$target" "$work/$target"
done
{
  echo "# Generated by benches/link-order.sh at $(git rev-parse --short HEAD); see .cargo/forge-linker."
  for target in "$@"; do
    echo "# $target"
    cat "$work/$target/order"
  done
} >.cargo/link-order.txt
echo "link-order: .cargo/link-order.txt: $(grep -cv '^#' .cargo/link-order.txt) names"
