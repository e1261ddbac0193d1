#!/usr/bin/env python3
"""Remote runner benchmark (issue 15), loopback only, bounded (a few minutes):

1. launch -> start latency on a remote runner with long-poll: from the task's first output
   line (`Task N added to queue`, stamped by the server at the launch) to the runner's first
   line (`Preparing: N`, stamped by the runner when it starts the job); the task shows
   `running` with the runner's first report right after. p50/p99 over sequential launches.
2. output ingest: one task printing 1 000 000 lines (`seq`) on a runner: lines/s from the
   launch to the task's `success` (everything stored).
3. throughput: 4 runners x 8 parallel short tasks (32 templates, 10 tasks each) vs the same
   tasks on the server's own runner (--max-parallel-tasks 32): tasks/s.

    benches/runners.py                           # release build (cargo build --release first)
    FORGE_BIN=target/debug/forge benches/runners.py [--latency N] [--rounds N]
Speeds are measured, never asserted.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("FORGE_BIN", os.path.join(ROOT, "target/release/forge"))
REG = "bench-registration-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, port):
        self.port, self.headers = port, {"Content-Type": "application/json"}

    def call(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request(method, path, json.dumps(body) if body is not None else None, self.headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = data.decode(errors="replace")
        return r.status, body, r.getheader("Set-Cookie")


def serve(work, port, extra_env):
    env = dict(os.environ, FORGE_ADMIN="admin", FORGE_ADMIN_PASSWORD="changeme", FORGE_LOG="warn",
               FORGE_SCRYPT_LOG_N="4", FORGE_RUNNER_REGISTRATION_TOKEN=REG,
               FORGE_OUTPUT_MAX_LINES="2000000", FORGE_LOCAL_REPO_ROOTS=work, **extra_env)
    log = open(os.path.join(work, "server.log"), "ab")
    p = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--db",
                          os.path.join(work, "forge.redb")], env=env, stdout=log, stderr=log)
    api = Api(port)
    for _ in range(200):
        try:
            api.call("GET", "/api/ping")
            break
        except OSError:
            time.sleep(0.05)
    status, _, cookie = api.call("POST", "/api/auth/login", {"auth": "admin", "password": "changeme"})
    assert status == 204, status
    api.headers["Cookie"] = cookie.split(";")[0]
    return p, api


def runner(work, port, name, max_parallel):
    cfg = os.path.join(work, f"{name}.json")
    subprocess.run([BIN, "runner", "register", "--server", f"http://127.0.0.1:{port}",
                    "--registration-token-stdin", "--name", name, "--max-parallel-tasks",
                    str(max_parallel), "--config", cfg], input=REG.encode(), check=True,
                   capture_output=True)
    log = open(cfg + ".log", "ab")
    return subprocess.Popen([BIN, "runner", "start", "--config", cfg],
                            env=dict(os.environ, FORGE_LOG="warn"), stdout=log, stderr=log)


def project(api, work, scripts):
    repo = os.path.join(work, "repo")
    os.makedirs(repo, exist_ok=True)
    for name, text in scripts.items():
        with open(os.path.join(repo, name), "w") as f:
            f.write(text)
    _, p, _ = api.call("POST", "/api/projects", {"name": "bench"})
    pid = p["id"]
    _, keys, _ = api.call("GET", f"/api/project/{pid}/keys")
    api.call("POST", f"/api/project/{pid}/repositories",
             {"name": "r", "project_id": pid, "git_url": repo, "ssh_key_id": keys[0]["id"]})
    _, repos, _ = api.call("GET", f"/api/project/{pid}/repositories")
    return pid, repos[0]["id"]


def template(api, pid, repo, name, script):
    status, t, _ = api.call("POST", f"/api/project/{pid}/templates",
                            {"name": name, "project_id": pid, "app": "bash", "playbook": script,
                             "repository_id": repo})
    assert status == 201, t
    return t["id"]


def launch(api, pid, tpl):
    status, t, _ = api.call("POST", f"/api/project/{pid}/tasks", {"template_id": tpl})
    assert status == 201, t
    return t["id"]


def wait_done(api, pid, task, secs=600):
    end = time.time() + secs
    while time.time() < end:
        _, t, _ = api.call("GET", f"/api/project/{pid}/tasks/{task}")
        if t["status"] in ("success", "error", "stopped"):
            return t
        time.sleep(0.01)
    raise SystemExit(f"task {task} did not finish")


def micros(text):
    # 2026-12-02T02:40:01.123456Z
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e6


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def bench_latency_and_ingest(n):
    work = tempfile.mkdtemp(prefix="forge-runners-")
    port = free_port()
    server, api = serve(work, port, {"FORGE_RUNNER_TIMEOUT": "60"})
    agents = [runner(work, port, "r1", 0)]
    try:
        pid, repo = project(api, work, {"quick.sh": "true\n", "flood.sh": "seq 1 1000000\n"})
        quick = template(api, pid, repo, "quick", "quick.sh")
        flood = template(api, pid, repo, "flood", "flood.sh")
        time.sleep(1)
        lat = []
        for _ in range(n):
            task = launch(api, pid, quick)
            t = wait_done(api, pid, task)
            assert t["status"] == "success", t
            _, out, _ = api.call("GET", f"/api/project/{pid}/tasks/{task}/output")
            queued = micros(out[0]["time"])
            prep = next(micros(l["time"]) for l in out if l["output"].startswith("Preparing:"))
            lat.append((prep - queued) / 1000)
        print(f"launch -> start on a remote runner ({n} launches): "
              f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms")
        t0 = time.time()
        task = launch(api, pid, flood)
        t = wait_done(api, pid, task)
        secs = time.time() - t0
        _, out, _ = api.call("GET", f"/api/project/{pid}/tasks/{task}/output?limit=1")
        print(f"output ingest from a runner: 1000000 lines in {secs:.2f} s = "
              f"{1e6 / secs:,.0f} lines/s ({t['status']})")
    finally:
        for a in agents:
            a.terminate()
            a.wait()
        server.terminate()
        server.wait()


def bench_throughput(rounds, remote):
    work = tempfile.mkdtemp(prefix="forge-runners-")
    port = free_port()
    env = {"FORGE_RUNNER_TIMEOUT": "60", "FORGE_MAX_PARALLEL_TASKS": "32"}
    server, api = serve(work, port, env)
    agents = [runner(work, port, f"r{i}", 8) for i in range(4)] if remote else []
    try:
        pid, repo = project(api, work, {"short.sh": "echo short\n"})
        tpls = [template(api, pid, repo, f"t{i}", "short.sh") for i in range(32)]
        time.sleep(1)
        t0 = time.time()
        tasks = [launch(api, pid, t) for _ in range(rounds) for t in tpls]
        for task in tasks:
            t = wait_done(api, pid, task)
            assert t["status"] == "success", t
        secs = time.time() - t0
        where = "4 remote runners x 8" if remote else "the server's own runner (32 slots)"
        print(f"{len(tasks)} short tasks on {where}: {secs:.2f} s = {len(tasks) / secs:.1f} tasks/s")
    finally:
        for a in agents:
            a.terminate()
            a.wait()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    bench_latency_and_ingest(args.latency)
    bench_throughput(args.rounds, True)
    bench_throughput(args.rounds, False)
