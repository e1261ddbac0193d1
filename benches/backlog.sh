#!/usr/bin/env bash
# Backlog memory: does the server's memory grow with the number of queued tasks? Starts a
# release build of Forge on a temp db (loopback only) with a template whose task sleeps (one
# task per template runs at a time, so every other launch waits), launches N tasks with wrk,
# and prints the server's RSS and peak RSS (VmHWM) for each N. Measured, never asserted.
#
#   benches/backlog.sh                 # N = 20000 and 60000
#   benches/backlog.sh 5000 10000      # other backlog sizes
#   FORGE_BIN=path benches/backlog.sh  # use an already built binary
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "backlog.sh: wrk is required"; exit 1; }
BIN=${FORGE_BIN:-target/release/forge}
if [ -z "${FORGE_BIN:-}" ]; then
  cargo build --release --quiet
fi
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(20000 60000)

work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill $server 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

# measure N: a fresh server, N launches, then its RSS and VmHWM (kB) and the queue length.
measure() {
  local n=$1 port=$((20000 + RANDOM % 20000))
  local base="http://127.0.0.1:$port" dir="$work/$n"
  mkdir -p "$dir/repo" && printf 'sleep 600\n' > "$dir/repo/run.sh"
  FORGE_ADMIN=admin FORGE_ADMIN_PASSWORD=changeme FORGE_LOG=warn FORGE_SCRYPT_LOG_N=4 \
    FORGE_LOCAL_REPO_ROOTS="$dir" \
    "$BIN" serve --listen "127.0.0.1:$port" --db "$dir/forge.redb" > "$dir/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -sf "$base/api/ping" >/dev/null && break; sleep 0.1; done
  curl -sf -c "$dir/cookie" -XPOST -d '{"auth":"admin","password":"changeme"}' "$base/api/auth/login"
  local token
  token=$(curl -sf -b "$dir/cookie" -XPOST "$base/api/user/tokens" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  local auth="Authorization: Bearer $token"
  curl -sf -H "$auth" -XPOST -d '{"name":"backlog"}' "$base/api/projects" >/dev/null
  curl -sf -H "$auth" -XPOST -d "{\"name\":\"r\",\"project_id\":1,\"git_url\":\"$dir/repo\",\"ssh_key_id\":1}" \
    "$base/api/project/1/repositories"
  curl -sf -H "$auth" -XPOST -d '{"name":"t","project_id":1,"app":"bash","playbook":"run.sh","repository_id":1}' \
    "$base/api/project/1/templates" >/dev/null
  local before
  before=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
  cat > "$dir/launch.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"template_id": 1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
local done, quota = 0, math.floor($n / 2)
function response()
  done = done + 1
  if done >= quota then wrk.thread:stop() end
end
LUA
  # Each wrk thread stops sending at its quota; wrk itself runs until killed.
  wrk -t2 -c16 -d600s -s "$dir/launch.lua" "$base/api/project/1/tasks" > "$dir/wrk.out" 2>&1 &
  local wrk_pid=$! last=0 waiting rss hwm
  while [ "$last" -lt "$n" ]; do
    sleep 0.5
    last=$(curl -sf -H "$auth" "$base/api/project/1/tasks/last?limit=1" | grep -o '"id":[0-9]*' | head -1 | cut -d: -f2 || true)
    last=${last:-0}
    kill -0 $wrk_pid 2>/dev/null || { cat "$dir/wrk.out"; exit 1; }
  done
  kill $wrk_pid; wait $wrk_pid 2>/dev/null || true
  waiting=$(curl -sf -H "$auth" "$base/api/project/1/tasks/last?limit=200" | grep -o '"status":"waiting"' | wc -l || true)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
  printf '%8s tasks launched (newest id %s; %s of the newest 200 waiting): RSS %s kB (before the launches %s kB), peak (VmHWM) %s kB\n' \
    "$n" "$last" "$waiting" "$rss" "$before" "$hwm"
  kill $server; wait $server 2>/dev/null || true; server=""
  rm -rf "$dir"
}

echo "Forge backlog memory: one sleeping task runs, the rest wait; $(nproc) cores shared with wrk"
for n in "${sizes[@]}"; do measure "$n"; done
