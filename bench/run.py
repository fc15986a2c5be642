"""Load and startup benchmark: the service (Redis store, one worker) against a bare baseline.

Starts a throwaway redis-server, the service and bench/baseline.py on 127.0.0.1, loads both with
wrk, and prints req/s and p50/p99 for GET one task, POST and list, the GET ratio to the baseline,
start-to-ready time and RSS. Prints figures; never fails on them. Runs well under two minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import RedisServer, free_port  # noqa: E402

DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
TARGETS = {"get_ratio": 0.9, "ready_seconds": 1.0, "rss_mb": 80.0}
POST_LUA = """wrk.method = "POST"
wrk.body = '{"title": "bench", "description": "a task created by wrk"}'
wrk.headers["Content-Type"] = "application/json"
"""


def start(args: list[str], env: dict[str, str], port: int) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server; return it and the seconds from exec to `/readyz` (or `/docs`) 200."""
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    probe = "/readyz" if "service" in args else "/docs"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{args} exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=0.5).status_code == 200:
                return proc, time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.005)


def wrk(url: str, seconds: int = DURATION, script: str | None = None) -> dict[str, float]:
    args = [shutil.which("wrk") or "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
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
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: start cost independent of machine load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.+)$", status, re.M)}
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024


def main() -> None:
    redis_server = RedisServer()
    redis_server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKS_")}
        service_port, baseline_port = free_port(), free_port()
        service, ready_seconds = start(
            [sys.executable, "-m", "service"],
            {**env, "PORT": str(service_port), "TASKS_STORE": "redis",
             "TASKS_REDIS_URL": redis_server.url,
             "TASKS_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info")},
            service_port,
        )  # fmt: skip
        procs.append(service)
        start_cpu = cpu_seconds(service.pid)
        idle_rss, _ = rss_mb(service.pid)
        baseline, _ = start(
            [sys.executable, str(ROOT / "bench" / "baseline.py")],
            {**env, "PORT": str(baseline_port), "BASELINE_REDIS_URL": redis_server.url},
            baseline_port,
        )
        procs.append(baseline)

        svc = f"http://127.0.0.1:{service_port}"
        task_id = httpx.post(f"{svc}/v1/tasks", json={"title": "bench"}).json()["id"]
        for i in range(100):
            httpx.post(f"{svc}/v1/tasks", json={"title": f"seed {i}", "description": "x" * 200})
        get_url = f"{svc}/v1/tasks/{task_id}"
        base_url = f"http://127.0.0.1:{baseline_port}/v1/tasks/{task_id}"
        assert httpx.get(base_url).json()["id"] == task_id

        wrk(get_url, 1), wrk(base_url, 1)  # warm up both
        results = {"baseline GET": wrk(base_url), "GET one task": wrk(get_url)}
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
            lua.write(POST_LUA)
        results["POST"] = wrk(f"{svc}/v1/tasks", script=lua.name)
        results["list (limit=20)"] = wrk(f"{svc}/v1/tasks?limit=20")
        loaded_rss, peak_rss = rss_mb(service.pid)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        redis_server.stop()

    print(f"\nwrk: 1 thread, {CONNECTIONS} connections, {DURATION}s per run, 127.0.0.1\n")
    print(f"{'endpoint':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for name, r in results.items():
        print(f"{name:<18}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['non2xx']:>9.0f}")
    ratio = results["GET one task"]["rps"] / results["baseline GET"]["rps"]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print()
    print(
        f"GET vs bare baseline   {ratio:.2f}x   target >= {TARGETS['get_ratio']}x  "
        f"{verdict(ratio >= TARGETS['get_ratio'])}"
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
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
