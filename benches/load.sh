#!/usr/bin/env bash
# Load benchmark: starts a release build of Forge on a temp db (loopback only) and measures,
# with wrk, req/s and p50/p99 latency for the paths users feel, then prints the ratios the
# performance issue asks for. Speeds are measured, never asserted.
#
#   benches/load.sh            # 10 s per scenario, plus the redb commit ceiling (criterion)
#   benches/load.sh --smoke    # 2 s per scenario, no ceiling (CI)
#   FORGE_BIN=path benches/load.sh   # use an already built binary
#
# The launch scenario runs last: each launch queues a real task (bash), and the backlog it
# leaves runs on after it, which must not load the scenarios that follow.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10s
SMOKE=""
[ "${1:-}" = "--smoke" ] && DURATION=2s && SMOKE=1
command -v wrk >/dev/null || { echo "load.sh: wrk is required (.ci/install-tools.sh installs it)"; exit 1; }

BIN=${FORGE_BIN:-target/release/forge}
if [ -z "${FORGE_BIN:-}" ]; then
  cargo build --release --quiet
fi

work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
base="http://127.0.0.1:$port"
mkdir -p "$work/repo" && printf 'true\n' > "$work/repo/run.sh"
FORGE_ADMIN=admin FORGE_ADMIN_PASSWORD=changeme FORGE_LOG=warn \
  "$BIN" serve --listen "127.0.0.1:$port" --db "$work/forge.redb" > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf "$base/api/ping" >/dev/null && break; sleep 0.1; done
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")

curl -sf -c "$work/cookie" -XPOST -d '{"auth":"admin","password":"changeme"}' "$base/api/auth/login"
token=$(curl -sf -b "$work/cookie" -XPOST "$base/api/user/tokens" | sed -E 's/.*"id":"([^"]+)".*/\1/')
auth="Authorization: Bearer $token"
curl -sf -H "$auth" -XPOST -d '{"name":"load"}' "$base/api/projects" >/dev/null
curl -sf -H "$auth" -XPOST -d "{\"name\":\"r\",\"project_id\":1,\"git_url\":\"$work/repo\",\"ssh_key_id\":1}" \
  "$base/api/project/1/repositories"
curl -sf -H "$auth" -XPOST -d '{"name":"t","project_id":1,"app":"bash","playbook":"run.sh","repository_id":1}' \
  "$base/api/project/1/templates" >/dev/null
curl -sf -H "$auth" -XPOST -d '{"template_id":1}' "$base/api/project/1/tasks" >/dev/null

cat > "$work/launch.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"template_id": 1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
cat > "$work/login.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"auth": "admin", "password": "changeme"}'
wrk.headers["Content-Type"] = "application/json"
LUA

# run NAME CONNECTIONS WRK-ARGS...: prints "NAME req/s p50 p99 non2xx" and keeps req/s in $rps
run() {
  local name=$1 conns=$2; shift 2
  local out
  out=$(wrk -t2 -c"$conns" -d"$DURATION" --latency "$@")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  local p50 p99 bad
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out")
  printf '%-40s %10s req/s   p50 %9s   p99 %9s   non-2xx %s\n' "$name" "$rps" "$p50" "$p99" "${bad:-0}"
}

echo "Forge load benchmark: $DURATION per scenario, wrk -t2, on $(nproc) cores (server and wrk share them)"
run "GET /api/ping" 64 "$base/api/ping";                                   ping=$rps
run "Bearer GET /api/user" 64 -H "$auth" "$base/api/user";                 user=$rps
run "Bearer GET /api/project/1/tasks/last" 64 -H "$auth" "$base/api/project/1/tasks/last"; last=$rps
run "POST /api/auth/login (scrypt 17)" 16 -s "$work/login.lua" "$base/api/auth/login"
wrk -t1 -c16 -d"$DURATION" -s "$work/login.lua" "$base/api/auth/login" >/dev/null &
storm=$!
sleep 0.5
run "Bearer GET /api/user during login storm" 64 -H "$auth" "$base/api/user"; during=$rps
wait $storm || true
peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
# The peak so far is the logins' (scrypt log_n 17 works in 128 MiB per hash); reset it (Linux
# clear_refs 5) so that the launch scenario's own peak shows.
echo 5 > "/proc/$server/clear_refs" 2>/dev/null || true
pre_launch_rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
run "POST /api/project/1/tasks (durable)" 64 -s "$work/launch.lua" "$base/api/project/1/tasks"; launch=$rps
launch_rss=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
kill $server 2>/dev/null || true
wait $server 2>/dev/null || true

# The one-commit-per-request ceiling, measured last (its fsyncs must not disturb the scenarios
# above) but in the same run: criterion's durable_write/redb_one_commit_per_write, writes/s.
ceiling=""
if [ -z "$SMOKE" ]; then
  ceiling=$(cargo bench --quiet --bench store -- --noplot 'durable_write/redb_one_commit_per_write' 2>/dev/null |
    awk '/thrpt:/ { v = $4; u = $5; gsub(/\[/, "", v); m = (u ~ /^K/) ? 1000 : (u ~ /^M/) ? 1000000 : 1; printf "%.0f", v * m; exit }')
fi

echo
awk -v p="$ping" -v u="$user" -v t="$last" -v d="$during" -v l="$launch" -v c="$ceiling" 'BEGIN {
  printf "Bearer GET /api/user / ping:                 %.2f (target >= 0.85)\n", u / p
  printf "Bearer GET /api/project/1/tasks/last / ping: %.2f (target >= 0.6)\n", t / p
  printf "Bearer during login storm / without:         %.2f (target >= 0.4)\n", d / u
  if (c > 0)
    printf "durable launches/s / redb commit ceiling:    %.0f / %.0f = %.2f (target >= 2)\n", l, c, l / c
  else
    printf "durable launches/s at 64 connections:        %.0f (ceiling not measured in --smoke)\n", l
}'
echo "idle RSS: ${idle_rss} kB; peak RSS (VmHWM) before the launches (logins): ${peak_rss} kB"
echo "RSS before the launch scenario: ${pre_launch_rss} kB; peak (VmHWM) during it: ${launch_rss} kB"
