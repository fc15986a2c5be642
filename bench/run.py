"""Load and startup benchmark: the service (Redis store, one worker) against a bare baseline.

Starts a throwaway redis-server, the service, bench/baseline.py, bench/floor.py (the same GET,
and a POST, as a raw ASGI callable: what the stack costs before any handler's work) and podinfo
(the reference Kubernetes demo service, in Go, `make bench` builds it) on 127.0.0.1, loads them
with wrk, and prints req/s and p50/p99 for GET one task, POST and a list page of 50 (the POSTs
fill it), the GET ratios to the baseline and to podinfo's Redis-backed `GET /cache/{key}` on one
core (GOMAXPROCS=1) serving the same JSON, POST and list as shares of GET (and the floor's POST
as a share of its GET), start-to-ready time and RSS. Then the same GET and list against a second
service in cluster mode (a Redis Cluster of 3 primaries and 3 replicas, on loopback too), beside
the standalone figures.
Prints figures; never fails on them. Runs in about four minutes.

On a shared machine wall-clock figures move with the load, so every endpoint is measured in
alternating rounds (each server sees the same load on average), and every row also shows the CPU
time the server process spent per request, which the load barely moves.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import RedisClusterServers, RedisServer, free_port  # noqa: E402

DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))  # alternating rounds, DURATION each
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
TARGETS = {
    "get_ratio": 1.2,  # GET one task vs the bare handler
    "peer_ratio": 0.5,  # GET one task vs podinfo
    "post_ratio": 0.8,  # POST vs GET one task
    "list_ratio": 0.4,  # a list page of 50 vs GET one task
    "ready_seconds": 1.0,
    "rss_mb": 80.0,
}
LIST_LIMIT = 50
LIST = f"list (limit={LIST_LIMIT})"
PODINFO = ROOT / ".tools" / "bin" / "podinfo"
POST_LUA = """wrk.method = "POST"
wrk.body = '{"title": "bench", "description": "a task created by wrk"}'
wrk.headers["Content-Type"] = "application/json"
"""


def start(
    args: list[str], env: dict[str, str], port: int, ready: str = "/readyz"
) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server; return it and the seconds from exec to `ready` answering 200."""
    probe = f"http://127.0.0.1:{port}{ready}"
    # One client for all the polls: `httpx2.get` builds a client (and its TLS context) per call,
    # ~20 ms of CPU each, which would compete with the server's own start on a small machine.
    with httpx2.Client(timeout=0.5) as client:
        started = time.monotonic()
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{args} exited {proc.returncode}")
            try:
                if client.get(probe).status_code == 200:
                    return proc, time.monotonic() - started
            except httpx2.HTTPError:
                pass
            time.sleep(0.005)


def wrk(url: str, pid: int, seconds: int = DURATION, script: str | None = None) -> dict[str, float]:
    """Load `url` (served by process `pid`); its req/s, p50/p99 ms, non-2xx count, and the CPU
    the server spent per request."""
    args = [shutil.which("wrk") or "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    cpu_before = cpu_seconds(pid)
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50": percentile("50"),
        "p99": percentile("99"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
        "cpu_us": cpu / max(requests, 1) * 1e6,
    }


def combine(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Alternating rounds of one endpoint: the median of each figure (non-2xx: the total)."""
    figures = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    figures["non2xx"] = sum(r["non2xx"] for r in rounds)
    return figures


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: start cost independent of machine load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.+)$", status, re.M)}
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024


def start_service(env: dict[str, str], **store: str) -> tuple[subprocess.Popen[bytes], float, str]:
    """The service on a free port with the Redis store `store` names; it, its start-to-ready
    seconds, and its base URL."""
    port = free_port()
    service, ready_seconds = start(
        [sys.executable, "-m", "service"],
        {**env, "PORT": str(port), "TASKS_METRICS_PORT": str(free_port()),
         "TASKS_STORE": "redis",
         "TASKS_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info"), **store},
        port,
    )  # fmt: skip
    return service, ready_seconds, f"http://127.0.0.1:{port}"


def seed(svc: str) -> str:
    """One task to GET, and 100 more to list; the first one's id."""
    task_id: str = httpx2.post(f"{svc}/v1/tasks", json={"title": "bench"}).json()["id"]
    for i in range(100):
        httpx2.post(f"{svc}/v1/tasks", json={"title": f"seed {i}", "description": "x" * 200})
    return task_id


def main() -> None:
    redis_server = RedisServer()
    redis_server.start()
    cluster = RedisClusterServers()
    cluster.start()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(POST_LUA)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKS_")}
        baseline_port = free_port()
        service, ready_seconds, svc = start_service(env, TASKS_REDIS_URL=redis_server.url)
        procs.append(service)
        start_cpu = cpu_seconds(service.pid)
        idle_rss, _ = rss_mb(service.pid)
        baseline, _ = start(
            [sys.executable, str(ROOT / "bench" / "baseline.py")],
            {**env, "PORT": str(baseline_port), "BASELINE_REDIS_URL": redis_server.url},
            baseline_port,
            ready="/docs",
        )
        procs.append(baseline)
        floor_port = free_port()
        floor, _ = start(
            [sys.executable, str(ROOT / "bench" / "floor.py")],
            {**env, "PORT": str(floor_port), "BASELINE_REDIS_URL": redis_server.url},
            floor_port,
            ready=f"/v1/tasks/{'0' * 26}",  # answers 200 ({}) once Redis is reachable
        )
        procs.append(floor)
        if not PODINFO.exists():
            raise SystemExit(f"{PODINFO} missing: `make bench` builds it")
        peer_port = free_port()
        peer, _ = start(
            [
                str(PODINFO),
                f"--port={peer_port}",
                f"--cache-server=tcp://127.0.0.1:{redis_server.port}",
                "--level=warn",  # its start-up lines; it logs requests only at debug
            ],
            {**env, "GOMAXPROCS": "1"},
            peer_port,
        )
        procs.append(peer)

        clustered, _, csvc = start_service(
            env, TASKS_REDIS_MODE="cluster", TASKS_REDIS_URL=cluster.url
        )
        procs.append(clustered)

        task_id, cluster_task_id = seed(svc), seed(csvc)
        get_url = f"{svc}/v1/tasks/{task_id}"
        cget_url = f"{csvc}/v1/tasks/{cluster_task_id}"
        base_url = f"http://127.0.0.1:{baseline_port}/v1/tasks/{task_id}"
        assert httpx2.get(base_url).json()["id"] == task_id
        # podinfo serves a string value as it is: the task's JSON, byte for byte what we serve.
        body = httpx2.get(get_url).content
        redis.Redis.from_url(redis_server.url).set(f"bench:{task_id}", body)
        peer_url = f"http://127.0.0.1:{peer_port}/cache/bench:{task_id}"
        assert httpx2.get(peer_url).content == body

        floor_url = f"http://127.0.0.1:{floor_port}"
        servers = {  # name: (url, server pid, wrk script)
            "floor GET": (f"{floor_url}/v1/tasks/{task_id}", floor.pid, None),
            "baseline GET": (base_url, baseline.pid, None),
            "GET one task": (get_url, service.pid, None),
            "podinfo GET": (peer_url, peer.pid, None),
            "GET (cluster)": (cget_url, clustered.pid, None),
            "POST": (f"{svc}/v1/tasks", service.pid, lua.name),
            "floor POST": (f"{floor_url}/", floor.pid, lua.name),
            LIST: (f"{svc}/v1/tasks?limit={LIST_LIMIT}", service.pid, None),
            "list (cluster)": (f"{csvc}/v1/tasks?limit={LIST_LIMIT}", clustered.pid, None),
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for url, pid, script in servers.values():
            wrk(url, pid, 1, script)  # warm up
        for _ in range(ROUNDS):  # alternate, so all see the same machine load on average
            for name, (url, pid, script) in servers.items():
                rounds[name].append(wrk(url, pid, script=script))
        results = {name: combine(figures) for name, figures in rounds.items()}
        loaded_rss, peak_rss = rss_mb(service.pid)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        redis_server.stop()
        cluster.stop()
        Path(lua.name).unlink()

    print(
        f"\nwrk: 1 thread, {CONNECTIONS} connections, {DURATION}s per run, 127.0.0.1; "
        f"each figure the median of {ROUNDS} alternating runs; podinfo on GOMAXPROCS=1, its\n"
        f"GET /cache/{{key}} is EXISTS + GET and logs no line (ours logs one per request at info)\n"
    )
    header = f"{'endpoint':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}"
    print(f"{header}{'CPU us/req':>12}")
    for name, r in results.items():
        print(
            f"{name:<18}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['non2xx']:>9.0f}"
            f"{r['cpu_us']:>12.0f}"
        )
    ratio = results["GET one task"]["rps"] / results["baseline GET"]["rps"]
    cpu_ratio = results["baseline GET"]["cpu_us"] / results["GET one task"]["cpu_us"]
    peer_ratio = results["GET one task"]["rps"] / results["podinfo GET"]["rps"]
    peer_cpu_ratio = results["podinfo GET"]["cpu_us"] / results["GET one task"]["cpu_us"]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print()
    print(
        f"GET vs bare baseline   {ratio:.2f}x   target >= {TARGETS['get_ratio']}x  "
        f"{verdict(ratio >= TARGETS['get_ratio'])}  "
        f"(by CPU per request: {cpu_ratio:.2f}x)"
    )
    print(
        f"GET vs podinfo         {peer_ratio:.2f}x   goal >= {TARGETS['peer_ratio']}x  "
        f"{verdict(peer_ratio >= TARGETS['peer_ratio'])}  "
        f"(by CPU per request: {peer_cpu_ratio:.2f}x)"
    )
    get_rps = results["GET one task"]["rps"]
    for what, key, target in [("POST", "POST", "post_ratio"), (LIST, LIST, "list_ratio")]:
        share = results[key]["rps"] / get_rps
        label = f"{what} vs GET"
        print(
            f"{label:<22} {share:.2f}x   target >= {TARGETS[target]}x  "
            f"{verdict(share >= TARGETS[target])}"
        )
    print(
        f"start to /readyz 200   {ready_seconds:.2f}s   target <= {TARGETS['ready_seconds']}s  "
        f"{verdict(ready_seconds <= TARGETS['ready_seconds'])}  "
        f"(CPU time the process used to get there: {start_cpu:.2f}s)"
    )
    print(
        f"RSS idle / loaded / peak  {idle_rss:.0f} / {loaded_rss:.0f} / {peak_rss:.0f} MB   "
        f"target <= {TARGETS['rss_mb']:.0f} MB  {verdict(peak_rss <= TARGETS['rss_mb'])}"
    )
    for what, standalone, clustered_ in [
        ("GET", results["GET one task"], results["GET (cluster)"]),
        (LIST, results[LIST], results["list (cluster)"]),
    ]:
        print(
            f"cluster vs standalone, {what}: {clustered_['rps'] / standalone['rps']:.2f}x req/s, "
            f"p50 {clustered_['p50']:.2f} vs {standalone['p50']:.2f} ms, "
            f"CPU/request {clustered_['cpu_us'] / standalone['cpu_us']:.2f}x"
        )
    floor_share = results["floor POST"]["rps"] / results["floor GET"]["rps"]
    print(
        f"POST vs GET on the floor (raw ASGI + redis-py, one HSET against one HGETALL): "
        f"{floor_share:.2f}x"
    )
    floor_cpu = results["floor GET"]["cpu_us"]
    print(
        f"CPU per GET above the floor (raw ASGI + redis-py): ours "
        f"{results['GET one task']['cpu_us'] - floor_cpu:.0f} us, the bare FastAPI handler "
        f"{results['baseline GET']['cpu_us'] - floor_cpu:.0f} us"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
