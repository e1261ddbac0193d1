#!/usr/bin/env python3
"""Schedule benchmark (issue 13): does the scheduler stay idle with 10 k active schedules, and
how late does it fire? Starts Forge on a temp db (loopback only), creates 10 000 active
schedules whose occurrences are far away (1 January, spread over the day), measures the
server's CPU while idle, then adds a few `@every 2s` schedules and reads the fire-time error
(task stored − occurrence due, logged by the scheduler at debug level) of each firing.
Speeds are measured, never asserted. Bounded in count and time (about two minutes).

    benches/schedules.py                      # release build (cargo build --release first)
    FORGE_BIN=target/debug/forge benches/schedules.py [--schedules N] [--idle-secs S]
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Content-Type": "application/json"}

    def call(self, method, path, body=None, want=(200, 201, 204)):
        payload = json.dumps(body if body is not None else {})
        try:
            self.conn.request(method, path, payload, self.headers)
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed an idle keep-alive connection: open another.
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, path, payload, self.headers)
            r = self.conn.getresponse()
        data = r.read()
        if r.status not in want:
            sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")
        cookie = r.getheader("Set-Cookie")
        return (json.loads(data) if data else None), cookie


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schedules", type=int, default=10_000)
    ap.add_argument("--idle-secs", type=int, default=30)
    ap.add_argument("--fire-secs", type=int, default=40)
    ap.add_argument("--ticking", type=int, default=10, help="@every 2s schedules")
    args = ap.parse_args()
    binary = os.environ.get("FORGE_BIN") or os.path.join(ROOT, "target/release/forge")
    if not os.environ.get("FORGE_BIN"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="forge-sched-bench-")
    repo = os.path.join(work, "repo")
    os.makedirs(repo)
    with open(os.path.join(repo, "run.sh"), "w") as f:
        f.write("true\n")
    port = free_port()
    log = open(os.path.join(work, "server.log"), "w+")
    env = dict(os.environ, FORGE_ADMIN="admin", FORGE_ADMIN_PASSWORD="changeme",
               FORGE_SCRYPT_LOG_N="4", FORGE_LOG="warn,forge::scheduler=debug", NO_COLOR="1",
               FORGE_LOCAL_REPO_ROOTS=work)
    server = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--db",
                               os.path.join(work, "forge.redb")], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        api = Api(port)
        _, cookie = api.call("POST", "/api/auth/login", {"auth": "admin", "password": "changeme"})
        api.headers["Cookie"] = cookie.split(";")[0]
        token, _ = api.call("POST", "/api/user/tokens")
        del api.headers["Cookie"]
        api.headers["Authorization"] = f"Bearer {token['id']}"
        project, _ = api.call("POST", "/api/projects", {"name": "bench"})
        p = project["id"]
        keys, _ = api.call("GET", f"/api/project/{p}/keys")
        api.call("POST", f"/api/project/{p}/repositories",
                 {"name": "r", "git_url": repo, "ssh_key_id": keys[0]["id"]})
        repos, _ = api.call("GET", f"/api/project/{p}/repositories")
        template, _ = api.call("POST", f"/api/project/{p}/templates",
                               {"name": "t", "app": "bash", "playbook": "run.sh",
                                "repository_id": repos[0]["id"]})
        rng = random.Random(13)
        started = time.time()
        for i in range(args.schedules):
            cron = f"{rng.randrange(60)} {rng.randrange(24)} 1 1 *"
            api.call("POST", f"/api/project/{p}/schedules",
                     {"name": f"s{i}", "template_id": template["id"], "cron_format": cron})
        created = time.time() - started
        time.sleep(3)
        ticks0, t0 = cpu_ticks(server.pid), time.time()
        time.sleep(args.idle_secs)
        ticks1, t1 = cpu_ticks(server.pid), time.time()
        hz = os.sysconf("SC_CLK_TCK")
        idle_pct = 100.0 * (ticks1 - ticks0) / hz / (t1 - t0)
        rss = next(int(l.split()[1]) for l in open(f"/proc/{server.pid}/status")
                   if l.startswith("VmRSS"))

        log.seek(0, os.SEEK_END)
        mark = log.tell()
        for i in range(args.ticking):
            api.call("POST", f"/api/project/{p}/schedules",
                     {"name": f"tick{i}", "template_id": template["id"],
                      "cron_format": "@every 2s"})
        time.sleep(args.fire_secs)
        log.flush()
        log.seek(mark)
        late = sorted(int(m.group(1)) for m in re.finditer(r"late_ms=(-?\d+)", log.read()))
        if not late:
            sys.exit("no firing was logged")

        def pct(q):
            return late[min(len(late) - 1, int(q * len(late)))]

        print(f"schedules: {args.schedules} active (+{args.ticking} @every 2s), "
              f"created in {created:.1f} s ({args.schedules / created:.0f}/s)")
        print(f"idle CPU: {idle_pct:.2f} % of one core over {t1 - t0:.0f} s; RSS {rss // 1024} MiB")
        print(f"fire-time error over {len(late)} firings: p50 {pct(0.5)} ms, "
              f"p99 {pct(0.99)} ms, max {late[-1]} ms")
    finally:
        server.terminate()
        server.wait(timeout=60)
        subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
