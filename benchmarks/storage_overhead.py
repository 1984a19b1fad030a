"""What a cloud run folder costs the driver: recording results with and without the mirror.

Starts an S3-compatible server (moto's server mode) on 127.0.0.1, then
records `--results` result rows (a variant manifest, its file versions and
its Parquet part, as the searcher does) into a local run folder, and again
into one mirrored to the server, where each write is uploaded before it
returns. Prints the medians and their ratio, measured in this run, and the
time `pull` takes to fetch the run into an empty folder (a new head node).
A real bucket is farther away than loopback: its round trip is added to
each upload, about four per recorded result.

    python benchmarks/storage_overhead.py --results 200
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evolve.record import mirror  # noqa: E402
from evolve.record.store import Store  # noqa: E402
from evolve.variant import Variant  # noqa: E402


def record(store: Store, i: int) -> float:
    t = time.perf_counter()
    files = store.put_files({"config.yaml": f"lr: {i}\nwarmup: {i % 7}\n".encode(),
                             "recipe.py": f"# variant {i}\n".encode() * 40})
    v = Variant(files=files, parents=(), operator="perturb", record={"i": i})
    store.put_variant(v)
    store.append_result({"variant_id": v.id, "parent_ids": [], "operator": "perturb", "record": {"i": i},
                         "status": "completed", "fitness": 3.0, "curve": [[t, 3.0, 3.0] for t in range(16)]})
    return time.perf_counter() - t


def server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=200)
    args = ap.parse_args()
    proc, endpoint = server()
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir("bench")
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["EVOLVE_CACHE"] = str(Path(tmp) / "cache")
            local = Store(Path(tmp) / "local")
            plain = [record(local, i) for i in range(args.results)]
            uri = "s3://bench/runs/one"
            m = mirror.Mirror(mirror.local_copy(uri), uri, interval_s=3600).start()
            try:
                mirrored = [record(Store(m.local), i) for i in range(args.results)]
            finally:
                m.stop()
            fresh = mirror.Mirror(Path(tmp) / "elsewhere", uri)
            t = time.perf_counter()
            n = fresh.pull()
            pull_s = time.perf_counter() - t
    finally:
        proc.kill()
        proc.wait()
    a, b = statistics.median(plain), statistics.median(mirrored)
    print(f"record a result: local {a * 1000:.1f} ms, mirrored to S3 on loopback {b * 1000:.1f} ms "
          f"(median of {args.results}); ratio {b / a:.2f}")
    print(f"pull into an empty folder: {n} files in {pull_s:.2f} s")


if __name__ == "__main__":
    main()
