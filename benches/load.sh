#!/usr/bin/env bash
# Load benchmark: starts a release build of Forge on a temp db (loopback only) and measures,
# with wrk, req/s and p50/p99 latency for the paths users feel, then prints the ratios the
# performance issue asks for. Speeds are measured, never asserted.
#
#   benches/load.sh            # 10 s per scenario, plus the redb commit ceiling (criterion)
#   benches/load.sh --smoke    # 2 s per scenario, no ceiling (CI)
#   benches/load.sh --no-ceiling   # 10 s per scenario, no ceiling (a repeat run)
#   benches/load.sh --flood    # only the output flood (one task printing 1 M lines)
#   FORGE_BIN=path benches/load.sh   # use an already built binary
#
# The launch scenario runs last: each launch queues a real task (bash), and the backlog it
# leaves runs on after it, which must not load the scenarios that follow.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10s
SMOKE=""
NO_CEILING=""
[ "${1:-}" = "--smoke" ] && DURATION=2s && SMOKE=1
FLOOD_ONLY=""
[ "${1:-}" = "--no-ceiling" ] && NO_CEILING=1
[ "${1:-}" = "--flood" ] && FLOOD_ONLY=1
# Lines the flood task prints (all stored: the server's cap is raised above it).
flood_default=1000000
[ -n "$SMOKE" ] && flood_default=100000
FLOOD_LINES=${FLOOD_LINES:-$flood_default}
command -v wrk >/dev/null || { echo "load.sh: wrk is required (.ci/install-tools.sh installs it)"; exit 1; }

BIN=${FORGE_BIN:-target/release/forge}
if [ -z "${FORGE_BIN:-}" ]; then
  cargo build --release --quiet
fi

work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
base="http://127.0.0.1:$port"
mkdir -p "$work/repo" && printf 'true\n' > "$work/repo/run.sh"
printf "yes 'TASK [deploy : copy configuration] ********************* ok: [web-01]' | head -n %d\n" \
  "$FLOOD_LINES" > "$work/repo/flood.sh"
# wrk acts as a trusted reverse proxy (loopback) so that the login storm can come from many
# client addresses (see login.lua): one address would be throttled (429) before hashing.
# The template's repository is a local folder: allowed under --local-repo-roots only.
FORGE_ADMIN=admin FORGE_ADMIN_PASSWORD=changeme FORGE_LOG=warn FORGE_LOCAL_REPO_ROOTS="$work" \
  FORGE_OUTPUT_MAX_LINES=$((FLOOD_LINES * 2)) FORGE_OUTPUT_MAX_BYTES=$((1 << 30)) \
  "$BIN" serve --listen "127.0.0.1:$port" --db "$work/forge.redb" --trusted-proxies 127.0.0.1 \
  > "$work/server.log" 2>&1 &
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
curl -sf -H "$auth" -XPOST -d '{"name":"flood","project_id":1,"app":"bash","playbook":"flood.sh","repository_id":1}' \
  "$base/api/project/1/templates" >/dev/null
curl -sf -H "$auth" -XPOST -d '{"template_id":1}' "$base/api/project/1/tasks" >/dev/null

# flood: one task printing $FLOOD_LINES lines, launch -> `success` (stored only once every line
# is durable), polled every 10 ms; prints the time and lines/s, keeps lines/s in $flood_lps.
flood() {
  local start end status="" id
  start=$(date +%s%N)
  id=$(curl -sf -H "$auth" -XPOST -d '{"template_id":2}' "$base/api/project/1/tasks" |
    sed -E 's/^\{"id":([0-9]+).*/\1/')
  while :; do
    status=$(curl -sf -H "$auth" "$base/api/project/1/tasks/$id" | sed -E 's/.*"status":"([a-z_]+)".*/\1/')
    case $status in success | error | stopped) break ;; esac
    sleep 0.01
  done
  end=$(date +%s%N)
  local stored
  stored=$(curl -sf -H "$auth" "$base/api/project/1/tasks/$id/output?offset=$FLOOD_LINES&limit=1")
  [ "$status" = success ] && [ "$stored" != "[]" ] || { echo "flood task $id: $status, $stored"; exit 1; }
  flood_lps=$(awk -v n="$FLOOD_LINES" -v ns=$((end - start)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }')
  printf '%-40s %10s lines/s  (%d lines in %d ms, load %s)\n' "output flood, launch -> success" \
    "$flood_lps" "$FLOOD_LINES" $(((end - start) / 1000000)) "$(cut -d' ' -f1 /proc/loadavg)"
}
if [ -n "$FLOOD_ONLY" ]; then
  echo "idle RSS: ${idle_rss} kB"
  for _ in 1 2 3; do flood; done
  # What the writer did (all three floods): commits, and their total time.
  curl -sf -H "$auth" "$base/api/metrics" | grep -E '^forge_store_commit_(latency|batch_size)_seconds_(sum|count)|^forge_store_commit.*(_sum|_count) |^forge_output'
  exit 0
fi

cat > "$work/launch.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"template_id": 1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
# Each login comes from its own forwarded client address (10.x.y.z, distinct per wrk thread
# and request), so the per-address throttle never answers it: every login costs a real
# scrypt hash (or a 503 when the hashing queue is full), which is the pressure measured.
cat > "$work/login.lua" <<'LUA'
local threads, n, id = 0, 0, 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function request()
  n = n + 1
  local ip = string.format("10.%d.%d.%d", id % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Forwarded-For"] = ip,
  }, '{"auth": "admin", "password": "changeme"}')
end
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
flood
run "POST /api/auth/login (scrypt 17, many addresses)" 16 -s "$work/login.lua" "$base/api/auth/login"
wrk -t1 -c16 -d"$DURATION" -s "$work/login.lua" "$base/api/auth/login" >/dev/null &
storm=$!
sleep 0.5
run "Bearer GET /api/user during login storm" 64 -H "$auth" "$base/api/user"; during=$rps
wait $storm || true
# Hashes the storm queued still run after wrk has gone (one at a time, 128 MiB each): a last
# login queued behind them answers once they are done, so none runs into the launches.
for _ in $(seq 1 200); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Forwarded-For: 10.255.255.254' \
    -XPOST -d '{"auth":"admin","password":"changeme"}' "$base/api/auth/login")
  [ "$code" = 204 ] && break
  sleep 0.1
done
peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
# The peak so far is the logins' (scrypt log_n 17 works in 128 MiB per hash); reset it (Linux
# clear_refs 5) so that the launch scenario's own peak shows.
# Where clear_refs is refused (some containers), VmHWM keeps the logins' peak: the launch
# scenario's own peak is then also sampled from VmRSS every 20 ms, and the larger of the two
# honest figures (reset VmHWM when it worked, else the samples) is printed.
hwm_reset=0
echo 5 > "/proc/$server/clear_refs" 2>/dev/null && hwm_reset=1
pre_launch_rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
( peak=0; while kill -0 $server 2>/dev/null; do
    r=$(awk '/VmRSS/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0)
    [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" > "$work/launch_peak"
    sleep 0.02
  done ) &
sampler=$!
run "POST /api/project/1/tasks (durable)" 64 -s "$work/launch.lua" "$base/api/project/1/tasks"; launch=$rps
kill $sampler 2>/dev/null || true
wait $sampler 2>/dev/null || true
launch_rss=$(cat "$work/launch_peak" 2>/dev/null || echo 0)
if [ "$hwm_reset" = 1 ]; then
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
  [ "$hwm" -gt "$launch_rss" ] && launch_rss=$hwm
fi
kill $server 2>/dev/null || true
wait $server 2>/dev/null || true

# The one-commit-per-request ceiling, measured last (its fsyncs must not disturb the scenarios
# above) but in the same run: criterion's durable_write/redb_one_commit_per_write, writes/s.
ceiling=""
if [ -z "$SMOKE$NO_CEILING" ]; then
  ceiling=$(cargo bench --quiet --bench store -- --noplot 'durable_write/redb_one_commit_per_write' 2>/dev/null |
    awk '/thrpt:/ { v = $4; u = $5; gsub(/\[/, "", v); m = (u ~ /^K/) ? 1000 : (u ~ /^M/) ? 1000000 : 1; printf "%.0f", v * m; exit }')
fi

echo
awk -v p="$ping" -v u="$user" -v f="$flood_lps" -v t="$last" -v d="$during" -v l="$launch" -v c="$ceiling" 'BEGIN {
  printf "Bearer GET /api/user / ping:                 %.2f (target >= 0.85)\n", u / p
  printf "Bearer GET /api/project/1/tasks/last / ping: %.2f (target >= 0.6)\n", t / p
  printf "Bearer during login storm / without:         %.2f (target >= 0.4)\n", d / u
  printf "output flood, lines/s launch -> success:      %.0f (target >= 800000)\n", f
  if (c > 0)
    printf "durable launches/s / redb commit ceiling:    %.0f / %.0f = %.2f (target >= 2)\n", l, c, l / c
  else
    printf "durable launches/s at 64 connections:        %.0f (ceiling not measured)\n", l
}'
echo "idle RSS: ${idle_rss} kB (target < 8192); peak RSS (VmHWM) before the launches (logins): ${peak_rss} kB"
echo "RSS before the launch scenario: ${pre_launch_rss} kB; peak during it: ${launch_rss} kB (target < 65536)"
