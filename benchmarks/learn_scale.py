"""Scale benchmark of `cds-service learn` (plain timing harness, no assertions).

    .venv/bin/python benchmarks/learn_scale.py [--patients 20000] [--bootstrap 200] [--seed 7]

Starts a private sekmet FHIR server (SMART Backend Services), loads a seeded synthetic
population (tests/support/synthetic_cohort.py): 15 % RFA, 10 % AMR (MVD), 15 % BTX-A
patients and 60 % bystanders in no cohort. Then, for each card, runs `cds-service learn`
as a separate process (Bulk Data system-level $export with an RS384 client assertion) and
reports its wall time, peak resident memory (the child's ru_maxrss), the staging file's
peak size (the child's TMPDIR is a private folder, polled while it runs) and the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from jwt.algorithms import RSAAlgorithm  # noqa: E402
from support.synthetic_cohort import Generator  # noqa: E402

CHUNK = 250  # patients per generator chunk and transaction


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path) -> tuple[subprocess.Popen, str, str, Path]:
    port = free_port()
    token = secrets.token_urlsafe(24)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path = workdir / "client.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key())) | {"alg": "RS384", "kid": "bench"}
    base = f"http://127.0.0.1:{port}/fhir"
    settings = {
        "base_url": base,
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(workdir / "data"),
        "own_private_key_path": str(workdir / "keys" / "k.pem"),
        "server_auth": {
            "types": ["bearer", "smart"],
            "tokens": [token],
            "smart_clients": [{"client_id": "bench", "jwks": {"keys": [jwk]}, "scopes": "system/*.read"}],
        },
        "simulator": {"enabled": False, "delay_seconds": 0.2},
        "validation": {"inbound": "strict"},
        "log_inbound": False,
    }
    (workdir / "settings.yaml").write_text(yaml.safe_dump(settings))
    sekmet = Path(sys.executable).parent / "sekmet"
    log = open(workdir / "sekmet.log", "wb")  # noqa: SIM115 (kept open for the server's life)
    process = subprocess.Popen(
        [str(sekmet), "serve", "-c", str(workdir / "settings.yaml")], cwd=workdir, stdout=log, stderr=subprocess.STDOUT
    )
    for _ in range(300):
        try:
            if requests.get(f"{base}/metadata", timeout=2).status_code == 200:
                return process, base, token, key_path
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("sekmet did not start")


def load(base: str, token: str, patients: int, seed: int) -> dict:
    plan = {"rfa": 0.15, "amr": 0.10, "btxa": 0.15}
    counts = {name: int(patients * share) for name, share in plan.items()}
    counts["bystanders"] = patients - sum(counts.values())
    resources = 0
    started = time.perf_counter()
    chunk_seed = seed
    for name, total in counts.items():
        for start in range(0, total, CHUNK):
            generator = Generator(seed=chunk_seed)
            chunk_seed += 1
            getattr(generator, name)(min(CHUNK, total - start))
            for bundle in generator.population.transactions(per_bundle=CHUNK):
                resources += len(bundle["entry"])
                response = requests.post(
                    base,
                    json=bundle,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
                    timeout=600,
                )
                response.raise_for_status()
    return {"patients": counts, "resources": resources, "load_s": time.perf_counter() - started}


def _watch_staging(folder: Path, done: threading.Event, peak: list[int]) -> None:
    """The largest size seen of the staging file(s) under the child's TMPDIR."""
    while not done.wait(0.05):
        size = 0
        for path in folder.glob("cds-learn-*/*"):
            with contextlib.suppress(OSError):  # deleted meanwhile
                size += path.stat().st_size
        peak[0] = max(peak[0], size)


def learn(card: str, base: str, key: Path, out: Path, bootstrap: int) -> dict:
    command = [
        str(Path(sys.executable).parent / "cds-service"),
        "learn",
        card,
        "--fhir-base",
        base,
        "--client-id",
        "bench",
        "--private-key",
        str(key),
        "--alg",
        "RS384",
        "--out",
        str(out),
        "--bootstrap",
        str(bootstrap),
        "--max-wait",
        "1800",
    ]
    tmp = out.parent / f"tmp-{card}"
    tmp.mkdir(parents=True, exist_ok=True)
    done, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_staging, args=(tmp, done, peak), daemon=True)
    watcher.start()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)}
    )
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    report = json.loads((out / f"{card}.report.json").read_text())
    return {
        "card": card,
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "staging_peak_mb": round(peak[0] / 1e6, 1),
        "status": report["status"],
        "timings_s": {k: round(v, 1) for k, v in report["provenance"].get("timings_s", {}).items()},
        "patients_scanned": report["counts"]["patients_scanned"],
        "included": report["counts"]["included"],
        "events": report["counts"]["events"],
        "c_corrected": report.get("performance", {}).get("c_statistic_optimism_corrected"),
        "slope_corrected": report.get("performance", {}).get("calibration_slope_optimism_corrected"),
        "output": output.strip().splitlines()[:1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=20000)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cards", default="rfa-recurrence,amr-persistence,btxa-response")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="learn-scale-") as tmp:
        workdir = Path(tmp)
        process, base, token, key = start_server(workdir)
        try:
            loaded = load(base, token, args.patients, args.seed)
            print(json.dumps({"loaded": loaded}), flush=True)
            for card in args.cards.split(","):
                print(json.dumps(learn(card, base, key, workdir / "out", args.bootstrap)), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
