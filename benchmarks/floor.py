"""Benchmark: the service measured side by side with a floor (issue 10). A script, not a test.

The floor is a minimal Flask app (benchmarks/floor_app.py) under the same gunicorn
settings as `cds-service serve` (gthread worker with the same admission worker class,
same threads, timeout and access log); it only parses the same JSON body with orjson and
answers {"cards": []}. Service and floor run in the same run, interleaved in rounds, so
machine noise hits both alike. Measured over loopback HTTP with keep-alive:

- full-prefetch patient-view, the largest Synthea record + an HFS history, one worker:
  floor, service unsigned (--allow-unsigned), service signed (ES384 JWT + jti, SQLite
  store): p50 / p99 and their ratios to the floor;
- growth: the same call with 4x and 16x the Observations: ms per 1,000 extra Observations;
- concurrency 8 on 2 workers: throughput ratio to the floor, p99;
- FHIR fallback (no prefetch) from the real FHIR server (sekmet): p95 at concurrency 1 and 8;
- peak RSS per worker (VmHWM) of the service.

    .venv/bin/python benchmarks/floor.py [--calls 200] [--rounds 5] [--out benchmarks/results]

Writes <out>/floor-<date>.json and .md. Synthea records: tests/data/synthea if present,
else ../shared/fhir-samples/synthea.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVICE = "/cds-services/hfs-outcomes-patient-view"
ISSUER = "https://bench.example/"
sys.path.insert(0, str(ROOT / "benchmarks"))
from hook_call import build_request, narrowed  # noqa: E402


def synthea_dir() -> Path:
    for candidate in (ROOT / "tests" / "data" / "synthea", ROOT.parent / "shared" / "fhir-samples" / "synthea"):
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    raise SystemExit("no Synthea records found (tests/data/synthea or ../shared/fhir-samples/synthea)")


def largest_bundle() -> dict:
    path = max(synthea_dir().glob("*.json"), key=lambda p: p.stat().st_size)
    return json.loads(path.read_text())


def with_more_observations(request: dict, factor: int) -> dict:
    grown = copy.deepcopy(request)
    entries = grown["prefetch"]["observations"]["entry"]
    base = list(entries)
    for n in range(1, factor):
        for entry in base:
            resource = dict(entry["resource"])
            resource["id"] = f"{resource.get('id', 'obs')}-x{n}"
            entries.append({"resource": resource})
    return grown


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_up(url: str, process: subprocess.Popen, log: Path, workers: int = 1) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            requests.get(url + "/healthz", timeout=1)
            if log.read_text(errors="replace").count("worker ready") >= workers:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server did not start:\n{log.read_text()[-2000:]}")


class Server:
    def __init__(self, kind: str, folder: Path, workers: int, env: dict | None = None, unsigned: bool = True):
        self.kind, self.port, self.workers = kind, free_port(), workers
        self.url = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / f"{kind}-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        full_env.update(env or {})
        full_env["CDS_DRAIN_DELAY_S"] = "0"
        if kind == "floor":
            command = [str(BIN / "python"), str(ROOT / "benchmarks" / "floor_app.py"), str(self.port), str(workers)]
        else:
            command = [str(BIN / "cds-service"), "serve", "--port", str(self.port), "--workers", str(workers)]
            command += ["--instance", str(folder / f"instance-{self.port}")]
            if unsigned:
                command.append("--allow-unsigned")
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        wait_up(self.url, self.process, self.log, workers)

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def peak_rss_mb(self) -> list[float]:
        peaks = []
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        return peaks

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Signer:
    def __init__(self, folder: Path):
        self.key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "bench", "alg": "ES384", "use": "sig"})
        (folder / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        self.trust = folder / "trust.toml"
        self.trust.write_text(f'[[issuers]]\niss = "{ISSUER}"\njwks_file = "jwks.json"\n')

    def tokens(self, audience: str, count: int) -> list[str]:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 600}  # within jwt_max_lifetime_s
        return [
            jwt.encode({**claims, "jti": str(uuid.uuid4())}, self.key, algorithm="ES384", headers={"kid": "bench"})
            for _ in range(count)
        ]


def timed_calls(
    session: requests.Session, url: str, body: bytes, count: int, tokens: list[str] | None = None
) -> list[float]:
    timings = []
    for n in range(count):
        headers = {"Content-Type": "application/json"}
        if tokens:
            headers["Authorization"] = "Bearer " + tokens.pop()
        started = time.perf_counter()
        answer = session.post(url + SERVICE, data=body, headers=headers, timeout=30)
        timings.append((time.perf_counter() - started) * 1000.0)
        if answer.status_code != 200:
            raise SystemExit(f"{url}: call {n} answered {answer.status_code}: {answer.text[:300]}")
    return timings


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_worker(folder: Path, bodies: dict[str, bytes], calls: int, rounds: int, signer: Signer) -> dict:
    floor = Server("floor", folder, 1)
    unsigned = Server("service", folder, 1)
    # Signed: without public_base_url the JWT `aud` is checked against the request's own URL.
    signed = Server("service", folder, 1, env={"CDS_TRUST_FILE": str(signer.trust)}, unsigned=False)
    results: dict = {}
    try:
        sessions = {name: requests.Session() for name in ("floor", "unsigned", "signed")}
        servers = {"floor": floor, "unsigned": unsigned, "signed": signed}
        for size, body in bodies.items():
            for name, server in servers.items():  # warm-up
                tokens = signer.tokens(server.url + SERVICE, 20) if name == "signed" else None
                timed_calls(sessions[name], server.url, body, 20, tokens)
            timings: dict[str, list[float]] = {name: [] for name in servers}
            # Larger bodies take longer: fewer calls per round keep the run's length sane.
            size_calls = max(5, calls // (int(size[1:]) if size.startswith("x") else 1))
            for _ in range(rounds):
                for name, server in servers.items():
                    if name == "signed" and size != "x1":
                        continue
                    tokens = signer.tokens(server.url + SERVICE, size_calls) if name == "signed" else None
                    timings[name] += timed_calls(sessions[name], server.url, body, size_calls, tokens)
            results[size] = {
                name: {"p50": pct(t, 0.5), "p99": pct(t, 0.99), "mean": statistics.fmean(t), "n": len(t)}
                for name, t in timings.items()
                if t
            }
        results["peak_rss_mb"] = {"unsigned": unsigned.peak_rss_mb(), "signed": signed.peak_rss_mb()}
    finally:
        for server in (floor, unsigned, signed):
            server.stop()
    return results


def concurrency(folder: Path, body: bytes, seconds: float, rounds: int) -> dict:
    floor = Server("floor", folder, 2)
    service = Server("service", folder, 2)
    out: dict = {"floor": {"calls": 0, "seconds": 0.0, "t": []}, "service": {"calls": 0, "seconds": 0.0, "t": []}}
    try:
        for _ in range(rounds):
            for name, server in (("floor", floor), ("service", service)):
                stop_at = time.monotonic() + seconds
                lock = threading.Lock()

                def client(server=server, stop_at=stop_at, name=name, lock=lock):
                    with requests.Session() as session:
                        while time.monotonic() < stop_at:
                            t = timed_calls(session, server.url, body, 1)
                            with lock:
                                out[name]["t"] += t
                                out[name]["calls"] += 1

                started = time.monotonic()
                with ThreadPoolExecutor(8) as pool:
                    for _ in range(8):
                        pool.submit(client)
                out[name]["seconds"] += time.monotonic() - started
        out["service"]["peak_rss_mb"] = service.peak_rss_mb()
    finally:
        floor.stop()
        service.stop()
    summary = {}
    for name, data in out.items():
        summary[name] = {
            "throughput_per_s": data["calls"] / data["seconds"],
            "p50": pct(data["t"], 0.5),
            "p99": pct(data["t"], 0.99),
        }
        if "peak_rss_mb" in data:
            summary[name]["peak_rss_mb"] = data["peak_rss_mb"]
    summary["throughput_ratio"] = summary["service"]["throughput_per_s"] / summary["floor"]["throughput_per_s"]
    return summary


def start_sekmet(work: Path) -> tuple[subprocess.Popen, str, str]:
    """The real FHIR server (sekmet) on a free port, its data in `work`: (process, base URL,
    bearer token) once /metadata answers (at most 60 s)."""
    sekmet = shutil.which("sekmet") or str(BIN / "sekmet")
    port, token = free_port(), uuid.uuid4().hex
    base = f"http://127.0.0.1:{port}/fhir"
    work.mkdir(exist_ok=True)
    settings = {
        "base_url": base,
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(work / "data"),
        "own_private_key_path": str(work / "keys" / "sekmet_private.pem"),
        "server_auth": {"types": ["bearer"], "tokens": [token]},
        "simulator": {"enabled": False},
        "validation": {"inbound": "strict"},
        "log_inbound": False,
    }
    (work / "settings.yaml").write_text(yaml.safe_dump(settings))
    with open(work / "sekmet.log", "wb") as log:  # the server keeps its own descriptor
        process = subprocess.Popen(
            [sekmet, "serve", "-c", str(work / "settings.yaml")], cwd=work, stdout=log, stderr=log
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/metadata", timeout=2).status_code == 200:
                return process, base, token
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("sekmet did not start")


def fhir_fallback(folder: Path, calls: int) -> dict:
    process, base, token = start_sekmet(folder / "sekmet")
    service = None
    try:
        bundle = json.loads((ROOT / "tests" / "data" / "fhir" / "hfs_patient_transaction.json").read_text())
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        created = requests.post(base, json=bundle, headers=headers, timeout=30).json()
        location = next(e["response"]["location"] for e in created["entry"] if "Patient/" in e["response"]["location"])
        patient_id = location.split("Patient/", 1)[1].split("/", 1)[0]
        service = Server("service", folder, 2)
        body = json.dumps(
            {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": base,
                "fhirAuthorization": {
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/*.read",
                    "subject": "cds-service",
                },
                "context": {"userId": "Practitioner/bench", "patientId": patient_id},
            }
        ).encode()
        out = {}
        for level in (1, 8):
            per_client = max(5, calls // level)

            def client():
                with requests.Session() as session:
                    return timed_calls(session, service.url, body, per_client)

            with ThreadPoolExecutor(level) as pool:
                client()  # warm-up
                timings = [t for result in pool.map(lambda _: client(), range(level)) for t in result]
            out[f"c{level}"] = {"p50": pct(timings, 0.5), "p95": pct(timings, 0.95), "n": len(timings)}
        return out
    finally:
        if service:
            service.stop()
        process.terminate()
        process.wait(timeout=10)


def markdown(result: dict) -> str:
    """The README table: each measure against its target (issue 18)."""
    w = result["one_worker"]
    x1 = w["x1"]
    floor = x1["floor"]
    load = ", ".join(f"{a:.1f}" for a in result.get("load_before", ()))
    rows = [
        f"Measured {result['date']} on {result['machine']} ({result['rounds']} interleaved rounds of {result['calls']} calls;"
        f" load average before the run {load or 'not recorded'}, after {', '.join(f'{a:.1f}' for a in result.get('load_after', ()))}).",
        "",
        "| Measure | Floor | Service | Ratio / value | Target |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("unsigned", "unsigned"), ("signed", "signed (JWT + jti)")):
        s = x1[name]
        rows.append(
            f"| p50, one worker, full prefetch, {label} | {floor['p50']:.1f} ms | {s['p50']:.1f} ms | {s['p50'] / floor['p50']:.2f}x | <= 1.0x |"
        )
        rows.append(
            f"| p99, one worker, full prefetch, {label} | {floor['p99']:.1f} ms | {s['p99']:.1f} ms | {s['p99'] / floor['p99']:.2f}x | <= 1.2x |"
        )
    if "narrowed" in w:
        n = w["narrowed"]
        rows.append(
            f"| p50, one worker, narrowed prefetch ({result['body_bytes']['narrowed'] / 1e3:.0f} KB), unsigned | {n['floor']['p50']:.1f} ms | {n['unsigned']['p50']:.1f} ms | {n['unsigned']['p50'] / n['floor']['p50']:.2f}x | <= 1.0x |"
        )
        rows.append(
            f"| p99, one worker, narrowed prefetch, unsigned | {n['floor']['p99']:.1f} ms | {n['unsigned']['p99']:.1f} ms | {n['unsigned']['p99'] / n['floor']['p99']:.2f}x | <= 1.2x |"
        )
    rows.append(f"| signed - unsigned at p50 | | | {x1['signed']['p50'] - x1['unsigned']['p50']:+.1f} ms | <= 1 ms |")
    obs = result["observations"]
    for size in ("x4", "x16"):
        extra = (obs[size] - obs["x1"]) / 1000.0
        service_cost = (w[size]["unsigned"]["p50"] - x1["unsigned"]["p50"]) / extra
        floor_cost = (w[size]["floor"]["p50"] - floor["p50"]) / extra
        rows.append(
            f"| p50 cost per 1,000 extra Observations ({size}: {obs[size]:,}) | {floor_cost:.1f} ms | {service_cost:.1f} ms | {service_cost / floor_cost:.2f}x | <= 0.6x |"
        )
    c = result["concurrency"]
    rows.append(
        f"| concurrency 8, 2 workers: throughput | {c['floor']['throughput_per_s']:.0f}/s | {c['service']['throughput_per_s']:.0f}/s | {c['throughput_ratio']:.2f}x | >= 0.9x |"
    )
    rows.append(f"| concurrency 8, 2 workers: p99 | {c['floor']['p99']:.1f} ms | {c['service']['p99']:.1f} ms | | |")
    if "fhir_fallback" in result:
        f = result["fhir_fallback"]
        rows.append(f"| FHIR fallback p95, concurrency 1 | | {f['c1']['p95']:.0f} ms | | |")
        rows.append(f"| FHIR fallback p95, concurrency 8 | | {f['c8']['p95']:.0f} ms | | <= 150 ms |")
    regular = max(c["service"].get("peak_rss_mb", [0.0]))
    grown = max(w["peak_rss_mb"]["unsigned"] + w["peak_rss_mb"]["signed"])
    rows.append(f"| peak RSS per worker, 846-resource calls (2 workers) | | {regular:.0f} MB | | <= 120 MB |")
    rows.append(f"| peak RSS per worker after the 16x-Observations calls | | {grown:.0f} MB | | |")
    return "\n".join(rows) + "\n"


def main() -> int:
    # SIGTERM ends the run through the `finally` blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="calls per target per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per concurrency round")
    parser.add_argument("--no-fhir", action="store_true", help="skip the FHIR fallback part")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    count, request = build_request(largest_bundle())
    observations = len(request["prefetch"]["observations"]["entry"])
    bodies = {"x1": json.dumps(request).encode()}
    for factor in (4, 16):
        bodies[f"x{factor}"] = json.dumps(with_more_observations(request, factor)).encode()
    # The prefetch of the narrowed templates (issue 18): the searches with a code filter
    # hold only the resources that carry one of its codes.
    bodies["narrowed"] = json.dumps(narrowed(request)).encode()
    result: dict = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        "resources": count,
        "observations": {"x1": observations, "x4": observations * 4, "x16": observations * 16},
        "body_bytes": {name: len(body) for name, body in bodies.items()},
        "load_before": os.getloadavg(),
        "calls": args.calls,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="floor-bench-") as tmp:
        folder = Path(tmp)
        signer = Signer(folder)
        result["one_worker"] = one_worker(folder, bodies, args.calls, args.rounds, signer)
        result["concurrency"] = concurrency(folder, bodies["x1"], args.seconds, max(1, args.rounds // 2))
        if not args.no_fhir:
            result["fhir_fallback"] = fhir_fallback(folder, args.calls)
    result["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"floor-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
