"""S3 upload/download throughput of `Storage` (SHA-256 stored and verified) against plain boto3.

Starts its own moto server process on 127.0.0.1, generates one random file and times, in the same run,
`Storage.upload_file` / `Storage.download_file` against boto3's `upload_file` / `download_file` with the
same TransferConfig (part size, concurrency, both from `storage:` in the config). The two are interleaved
(the order flips every repeat) so page cache and moto's state favour neither; medians are reported.

    python bench/bench_storage.py [--size-mb 200] [--repeats 3] [--override storage.part_size_mb=16 ...]

Target: ours >= 0.8x plain boto3 for both directions.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import boto3
import requests
from boto3.s3.transfer import TransferConfig

from bifusion.components.config_schema import StorageConfig, load_config
from bifusion.components.storage import Storage, sha256_of_file

MiB = 1024 * 1024
BUCKET = "bench"
# moto accepts any credentials; set them so the benchmark never touches a real AWS account.
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto_server() -> tuple[subprocess.Popen, str]:
    """A moto S3 server process on a free 127.0.0.1 port; returns it and its URL once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            return process, url
        except requests.RequestException:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"moto server on {url} did not come up within 30 s") from None
            time.sleep(0.1)


def write_random_file(path: Path, size_bytes: int) -> None:
    with open(path, "wb") as handle:
        for offset in range(0, size_bytes, 8 * MiB):
            handle.write(os.urandom(min(8 * MiB, size_bytes - offset)))


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def transfer_config(storage: StorageConfig) -> TransferConfig:
    part = storage.part_size_mb * MiB
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=storage.max_concurrency)


def run(size_mb: int, repeats: int, overrides: list[str]) -> None:
    os.environ.update(MOTO_ENV)
    process, url = start_moto_server()
    try:
        config = load_config(["base"], [f"storage.endpoint_url={url}", *overrides]).storage
        storage = Storage(config)
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket=BUCKET)
        plain_transfer = transfer_config(config)

        with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
            source = Path(tmp) / "payload.bin"
            write_random_file(source, size_mb * MiB)
            expected = sha256_of_file(source)
            ours_uri = f"s3://{BUCKET}/ours/payload.bin"
            ours_target, plain_target = Path(tmp) / "ours.out", Path(tmp) / "plain.out"

            cases = {
                ("upload", "ours"): lambda: storage.upload_file(source, ours_uri),
                ("upload", "plain"): lambda: client.upload_file(
                    str(source), BUCKET, "plain/payload.bin", Config=plain_transfer
                ),
                ("download", "ours"): lambda: storage.download_file(ours_uri, ours_target),
                ("download", "plain"): lambda: client.download_file(
                    BUCKET, "plain/payload.bin", str(plain_target), Config=plain_transfer
                ),
            }
            seconds: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
            for repeat in range(repeats):
                order = ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours")
                for direction in ("upload", "download"):
                    for who in order:
                        seconds[(direction, who)].append(timed(cases[(direction, who)]))
                for target in (ours_target, plain_target):
                    if sha256_of_file(target) != expected:
                        raise RuntimeError(f"{target}: downloaded bytes differ from the source")
                    target.unlink()

        print(
            f"{size_mb} MiB file, {repeats} repeats (median), part {config.part_size_mb} MiB, "
            f"concurrency {config.max_concurrency}, moto server {url}, {os.cpu_count()} CPU cores"
        )
        print("| direction | ours (Storage) MiB/s | plain boto3 MiB/s | ours / plain |")
        print("|---|---|---|---|")
        for direction in ("upload", "download"):
            ours = size_mb / statistics.median(seconds[(direction, "ours")])
            plain = size_mb / statistics.median(seconds[(direction, "plain")])
            print(f"| {direction} | {ours:.1f} | {plain:.1f} | {ours / plain:.2f}x |")
        for (direction, who), values in seconds.items():
            print(f"{direction} {who} seconds: {', '.join(f'{v:.2f}' for v in values)}")
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200, help="size of the generated file in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="config override on top of configs/base.yaml, e.g. storage.part_size_mb=16 (repeatable)",
    )
    args = parser.parse_args()
    run(args.size_mb, args.repeats, args.override)


if __name__ == "__main__":
    main()
