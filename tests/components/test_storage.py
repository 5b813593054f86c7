"""The storage API on local paths, file:// URIs and s3:// against a real moto server process.

Faults S3 itself would produce (throttling, a stalled upload) come from `S3FaultProxy`, a small HTTP proxy
between the client and moto; crashes are real child processes killed mid-transfer.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
import requests
from s3_fault_proxy import S3FaultProxy

from bifusion.components.config_schema import StorageConfig, load_config
from bifusion.components.storage import (
    ChecksumMismatchError,
    EndpointUnreachableError,
    NotFoundError,
    PermissionDeniedError,
    Storage,
    StorageError,
    local_path,
    sha256_of_bytes,
    split_s3_uri,
)

MiB = 1024 * 1024


def storage_config(*overrides: str) -> StorageConfig:
    """`storage:` from configs/base.yaml plus overrides (these tests need no MLflow store, so no make_config)."""
    return load_config(["base"], list(overrides)).storage


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Store:
    """A `Storage` and a root URI on one backend, plus ways to touch the stored bytes behind its back."""

    storage: Storage
    root: str
    endpoint: str | None  # the moto server behind an s3:// root

    def uri(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def s3_client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint)

    def replace_bytes_keeping_checksum(self, uri: str, data: bytes) -> None:
        """Overwrite a published file without going through the API (the stored SHA-256 stays the old one)."""
        if uri.startswith("s3://"):
            bucket, key = split_s3_uri(uri)
            metadata = self.s3_client().head_object(Bucket=bucket, Key=key)["Metadata"]
            self.s3_client().put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata)
        else:
            local_path(uri).write_bytes(data)

    def put_without_checksum(self, uri: str, data: bytes) -> None:
        """Publish a file the way another tool would: no stored SHA-256."""
        if uri.startswith("s3://"):
            bucket, key = split_s3_uri(uri)
            self.s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        else:
            local_path(uri).parent.mkdir(parents=True, exist_ok=True)
            local_path(uri).write_bytes(data)


def make_s3_store(endpoint: str, bucket: str, workdir: Path) -> Store:
    return Store(Storage(storage_config(f"storage.endpoint_url={endpoint}"), workdir), f"s3://{bucket}/store", endpoint)


@pytest.fixture(params=["path", "file_uri", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same tests on a plain local path, a file:// URI and an s3:// prefix on the moto server."""
    if request.param == "s3":
        return make_s3_store(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"), tmp_path)
    root = tmp_path / "store"
    return Store(Storage(storage_config(), tmp_path), root.as_uri() if request.param == "file_uri" else str(root), None)


@pytest.fixture
def s3_store(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> Store:
    return make_s3_store(s3_endpoint, s3_bucket, tmp_path)


@pytest.fixture(scope="module")
def s3_endpoint_checking_auth(s3_endpoint: str) -> Iterator[str]:
    """A second moto server that authenticates requests, so unknown credentials get a real 403.

    The session's moto server accepts any credentials; with INITIAL_NO_AUTH_ACTION_COUNT=0 moto checks every
    request against its IAM state, in which the test credentials do not exist (InvalidAccessKeyId).
    """
    port = closed_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url, timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, f"moto server with auth on {url} did not come up"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def aws_test_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test credentials in the env for tests that talk to no moto server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def write_random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# ---------------------------------------------------------------------------------------------------------
# Behaviour shared by both backends


def test_bytes_text_and_json_round_trip(store: Store) -> None:
    storage = store.storage
    storage.write_bytes(store.uri("blob.bin"), b"\x00\x01binary\xff")
    storage.write_text(store.uri("notes", "readme.txt"), "scène 0000_00\n")
    storage.write_json(store.uri("meta.json"), {"epoch": 3, "classes": ["chair", "table"], "miou": 0.5})

    assert storage.read_bytes(store.uri("blob.bin")) == b"\x00\x01binary\xff"
    assert storage.read_text(store.uri("notes", "readme.txt")) == "scène 0000_00\n"
    assert storage.read_json(store.uri("meta.json")) == {"epoch": 3, "classes": ["chair", "table"], "miou": 0.5}


def test_overwrite_replaces_content_and_checksum(store: Store) -> None:
    uri = store.uri("latest.json")
    store.storage.write_json(uri, {"epoch": 1})
    store.storage.write_json(uri, {"epoch": 2})
    assert store.storage.read_json(uri) == {"epoch": 2}
    assert store.storage.info(uri).sha256 == sha256_of_bytes(store.storage.read_bytes(uri))


def test_read_json_of_non_json_names_the_uri(store: Store) -> None:
    uri = store.uri("broken.json")
    store.storage.write_text(uri, "{not json")
    with pytest.raises(StorageError, match="broken.json: not valid JSON"):
        store.storage.read_json(uri)


def test_exists_and_info_report_size_and_sha256(store: Store) -> None:
    uri = store.uri("a", "weights.bin")
    data = b"w" * 1000
    assert not store.storage.exists(uri)
    assert store.storage.info(uri) is None

    store.storage.write_bytes(uri, data)

    assert store.storage.exists(uri)
    info = store.storage.info(uri)
    assert (info.size, info.sha256) == (1000, sha256_of_bytes(data))
    assert not store.storage.exists(store.uri("a")), "a folder/prefix is not a published file"


def test_list_is_recursive_sorted_and_shows_only_published_files(store: Store) -> None:
    for name in ("z.bin", "a/b/deep.bin", "a/x.bin", "ab/other.bin"):
        store.storage.write_bytes(store.uri(name), name.encode())

    assert store.storage.list(store.root) == [
        store.uri("a/b/deep.bin"), store.uri("a/x.bin"), store.uri("ab/other.bin"), store.uri("z.bin")
    ]
    assert store.storage.list(store.uri("a")) == [store.uri("a/b/deep.bin"), store.uri("a/x.bin")]
    assert store.storage.list(store.uri("a/x.bin")) == [store.uri("a/x.bin")]
    assert store.storage.list(store.uri("missing")) == []


def test_local_checksum_lives_in_a_hidden_sidecar_that_list_skips(tmp_path: Path) -> None:
    storage = Storage(storage_config(), tmp_path)
    storage.write_bytes(str(tmp_path / "out" / "model.pt"), b"weights")

    assert (tmp_path / "out" / ".model.pt.sha256").read_text() == sha256_of_bytes(b"weights")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".model.pt.sha256", "model.pt"]
    assert storage.list(str(tmp_path / "out")) == [str(tmp_path / "out" / "model.pt")]


def test_s3_checksum_lives_in_object_metadata(s3_store: Store, tmp_path: Path) -> None:
    data = write_random_file(tmp_path / "model.pt", 1000)
    s3_store.storage.upload_file(tmp_path / "model.pt", s3_store.uri("model.pt"))
    s3_store.storage.write_bytes(s3_store.uri("small.bin"), b"abc")

    bucket, _ = split_s3_uri(s3_store.root)
    client = s3_store.s3_client()
    assert client.head_object(Bucket=bucket, Key="store/model.pt")["Metadata"] == {"sha256": sha256_of_bytes(data)}
    assert client.head_object(Bucket=bucket, Key="store/small.bin")["Metadata"] == {"sha256": sha256_of_bytes(b"abc")}


def test_upload_and_download_file_round_trip(store: Store, tmp_path: Path) -> None:
    data = write_random_file(tmp_path / "src" / "ckpt.pt", 300_000)
    store.storage.upload_file(tmp_path / "src" / "ckpt.pt", store.uri("run", "ckpt.pt"))

    target = tmp_path / "fetched" / "nested" / "ckpt.pt"
    store.storage.download_file(store.uri("run", "ckpt.pt"), target)

    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["ckpt.pt"], "no temp file left beside the target"


def test_upload_of_missing_local_file_is_not_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such local file"):
        store.storage.upload_file(tmp_path / "absent.pt", store.uri("absent.pt"))


def test_upload_dir_and_download_dir_round_trip(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "scene0000_00"
    files = {"points.npy": b"p" * 100, "frames/0.jpg": b"j" * 10, "frames/20.jpg": b"k" * 20}
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    (source / ".cache").write_bytes(b"hidden files are not published")

    written = store.storage.upload_dir(source, store.uri("scenes"))
    assert written == [store.uri("scenes", name) for name in sorted(files)]
    assert store.storage.list(store.uri("scenes")) == written

    fetched = store.storage.download_dir(store.uri("scenes"), tmp_path / "copy")
    assert sorted(fetched) == sorted(tmp_path / "copy" / name for name in files)
    assert {p.relative_to(tmp_path / "copy").as_posix(): p.read_bytes() for p in fetched} == files


def test_download_dir_of_empty_prefix_is_not_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nothing published"):
        store.storage.download_dir(store.uri("nothing-here"), tmp_path / "copy")


def test_delete_removes_file_and_checksum(store: Store) -> None:
    uri = store.uri("gone.bin")
    store.storage.write_bytes(uri, b"x")
    store.storage.delete(uri)
    assert not store.storage.exists(uri)
    assert store.storage.list(store.root) == []


def test_tampered_bytes_fail_read_with_checksum_mismatch(store: Store) -> None:
    uri = store.uri("model.pt")
    store.storage.write_bytes(uri, b"original weights")
    store.replace_bytes_keeping_checksum(uri, b"flipped weights!")

    with pytest.raises(ChecksumMismatchError, match="SHA-256 mismatch") as excinfo:
        store.storage.read_bytes(uri)
    assert "model.pt" in str(excinfo.value)
    assert sha256_of_bytes(b"original weights") in str(excinfo.value)


@pytest.mark.parametrize("target_existed", [False, True])
def test_tampered_bytes_fail_download_and_leave_target_alone(
    store: Store, tmp_path: Path, target_existed: bool
) -> None:
    uri = store.uri("model.pt")
    store.storage.write_bytes(uri, b"original weights")
    store.replace_bytes_keeping_checksum(uri, b"flipped weights!")
    target = tmp_path / "local" / "model.pt"
    if target_existed:
        target.parent.mkdir(parents=True)
        target.write_bytes(b"what was here before")

    with pytest.raises(ChecksumMismatchError):
        store.storage.download_file(uri, target)

    if target_existed:
        assert target.read_bytes() == b"what was here before"
        assert [p.name for p in target.parent.iterdir()] == ["model.pt"], "temp file cleaned up"
    else:
        assert not target.exists()
        assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_files_published_without_checksum_are_read_unverified(store: Store, tmp_path: Path) -> None:
    uri = store.uri("foreign.txt")
    store.put_without_checksum(uri, b"written by another tool")

    assert store.storage.info(uri).sha256 is None
    assert store.storage.read_bytes(uri) == b"written by another tool"
    store.storage.download_file(uri, tmp_path / "foreign.txt")
    assert (tmp_path / "foreign.txt").read_bytes() == b"written by another tool"


def test_missing_file_is_not_found_and_download_creates_nothing(store: Store, tmp_path: Path) -> None:
    store.storage.write_bytes(store.uri("present.bin"), b"x")  # the bucket/folder exists, the key does not
    uri = store.uri("absent.bin")
    with pytest.raises(NotFoundError, match="absent.bin"):
        store.storage.read_bytes(uri)
    with pytest.raises(NotFoundError, match="absent.bin"):
        store.storage.download_file(uri, tmp_path / "out" / "absent.bin")
    assert not (tmp_path / "out" / "absent.bin").exists()


# ---------------------------------------------------------------------------------------------------------
# S3: multipart, endpoint resolution, errors, retries


def test_file_larger_than_part_size_is_uploaded_in_parts(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    storage = Storage(storage_config(f"storage.endpoint_url={s3_endpoint}", "storage.part_size_mb=5"), tmp_path)
    data = write_random_file(tmp_path / "big.bin", 12 * MiB)
    client = boto3.client("s3", endpoint_url=s3_endpoint)

    storage.upload_file(tmp_path / "big.bin", f"s3://{s3_bucket}/big.bin")
    storage.write_bytes(f"s3://{s3_bucket}/big-bytes.bin", data)
    storage.write_bytes(f"s3://{s3_bucket}/small.bin", data[: 4 * MiB])

    assert client.head_object(Bucket=s3_bucket, Key="big.bin")["ETag"].endswith('-3"'), "12 MiB in 5 MiB parts"
    assert client.head_object(Bucket=s3_bucket, Key="big-bytes.bin")["ETag"].endswith('-3"')
    assert "-" not in client.head_object(Bucket=s3_bucket, Key="small.bin")["ETag"], "below part size: one PUT"
    storage.download_file(f"s3://{s3_bucket}/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    assert storage.read_bytes(f"s3://{s3_bucket}/big-bytes.bin") == data


def test_tampered_multipart_object_fails_download(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    storage = Storage(storage_config(f"storage.endpoint_url={s3_endpoint}", "storage.part_size_mb=5"), tmp_path)
    data = write_random_file(tmp_path / "big.bin", 11 * MiB)
    uri = f"s3://{s3_bucket}/big.bin"
    storage.upload_file(tmp_path / "big.bin", uri)
    store = Store(storage, f"s3://{s3_bucket}", s3_endpoint)
    store.replace_bytes_keeping_checksum(uri, data[:-1] + bytes([data[-1] ^ 1]))

    with pytest.raises(ChecksumMismatchError):
        storage.download_file(uri, tmp_path / "back.bin")
    assert not (tmp_path / "back.bin").exists()


def test_endpoint_comes_from_aws_endpoint_url_when_config_has_none(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    storage = Storage(storage_config("storage.endpoint_url=null"), tmp_path)

    storage.write_text(f"s3://{s3_bucket}/via-env.txt", "hello")

    body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=s3_bucket, Key="via-env.txt")["Body"]
    assert body.read() == b"hello"


def test_endpoint_in_config_wins_over_the_environment(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    storage = Storage(storage_config(f"storage.endpoint_url={s3_endpoint}"), tmp_path)
    storage.write_text(f"s3://{s3_bucket}/via-config.txt", "hello")
    assert storage.read_text(f"s3://{s3_bucket}/via-config.txt") == "hello"


@pytest.mark.parametrize("operation", ["write", "read", "exists", "list", "download", "upload"])
def test_missing_bucket_is_not_found_naming_the_bucket(s3_endpoint: str, tmp_path: Path, operation: str) -> None:
    storage = Storage(storage_config(f"storage.endpoint_url={s3_endpoint}"), tmp_path)
    (tmp_path / "f.bin").write_bytes(b"x")
    uri = "s3://no-such-bucket-7f3a/run/f.bin"
    calls: dict[str, Callable[[], object]] = {
        "write": lambda: storage.write_bytes(uri, b"x"),
        "read": lambda: storage.read_bytes(uri),
        "exists": lambda: storage.exists(uri),
        "list": lambda: storage.list("s3://no-such-bucket-7f3a/run"),
        "download": lambda: storage.download_file(uri, tmp_path / "out.bin"),
        "upload": lambda: storage.upload_file(tmp_path / "f.bin", uri),
    }
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket-7f3a' does not exist"):
        calls[operation]()


def test_missing_key_is_not_found_naming_the_key(s3_store: Store) -> None:
    s3_store.storage.write_bytes(s3_store.uri("other.bin"), b"x")
    with pytest.raises(NotFoundError, match="no object with key 'store/absent.bin'"):
        s3_store.storage.read_bytes(s3_store.uri("absent.bin"))


@pytest.mark.parametrize("operation", ["write", "read", "exists", "list", "upload"])
def test_rejected_credentials_are_permission_denied(
    s3_endpoint_checking_auth: str, tmp_path: Path, operation: str
) -> None:
    storage = Storage(storage_config(f"storage.endpoint_url={s3_endpoint_checking_auth}"), tmp_path)
    (tmp_path / "f.bin").write_bytes(b"x")
    uri = "s3://ckpt/run/f.bin"
    calls: dict[str, Callable[[], object]] = {
        "write": lambda: storage.write_bytes(uri, b"x"),
        "read": lambda: storage.read_bytes(uri),
        "exists": lambda: storage.exists(uri),
        "list": lambda: storage.list("s3://ckpt/run"),
        "upload": lambda: storage.upload_file(tmp_path / "f.bin", uri),
    }
    with pytest.raises(PermissionDeniedError, match="permission denied .*check the credentials"):
        calls[operation]()


def test_missing_credentials_are_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = Storage(storage_config(f"storage.endpoint_url=http://127.0.0.1:{closed_port()}"), tmp_path)

    with pytest.raises(PermissionDeniedError, match="no AWS credentials found"):
        storage.write_bytes("s3://ckpt/run/f.bin", b"x")


@pytest.mark.usefixtures("aws_test_credentials")
def test_unreachable_endpoint_fails_fast_naming_it(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    storage = Storage(
        storage_config(f"storage.endpoint_url={endpoint}", "storage.max_attempts=2", "storage.connect_timeout_s=0.5"),
        tmp_path,
    )
    start = time.monotonic()
    with pytest.raises(EndpointUnreachableError, match=f"{endpoint} unreachable after 2 attempts"):
        storage.write_bytes("s3://ckpt/run/f.bin", b"x")
    assert time.monotonic() - start < 10


@pytest.mark.usefixtures("aws_test_credentials")
def test_endpoint_that_never_answers_times_out_after_max_attempts(tmp_path: Path) -> None:
    connections: list[socket.socket] = []

    def accept_and_stay_silent(server: socket.socket) -> None:
        while True:
            try:
                connections.append(server.accept()[0])
            except OSError:  # the listening socket was closed
                return

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        threading.Thread(target=accept_and_stay_silent, args=(silent,), daemon=True).start()
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        storage = Storage(
            storage_config(f"storage.endpoint_url={endpoint}", "storage.max_attempts=2", "storage.read_timeout_s=0.3"),
            tmp_path,
        )
        start = time.monotonic()
        with pytest.raises(EndpointUnreachableError, match=f"{endpoint} unreachable after 2 attempts"):
            storage.read_bytes("s3://ckpt/run/f.bin")
        assert time.monotonic() - start < 10
    for connection in connections:
        connection.close()
    assert len(connections) == 2, "one connection per attempt (a timed-out connection is not reused)"


@pytest.mark.parametrize("operation", ["write", "read", "multipart_upload"])
def test_throttled_requests_are_retried_until_they_succeed(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, operation: str
) -> None:
    direct = Storage(storage_config(f"storage.endpoint_url={s3_endpoint}"), tmp_path)
    uri = f"s3://{s3_bucket}/retried.bin"
    data = write_random_file(tmp_path / "src.bin", 11 * MiB if operation == "multipart_upload" else 1000)
    if operation == "read":
        direct.write_bytes(uri, data)

    with S3FaultProxy(s3_endpoint, fail_first=1) as proxy:
        storage = Storage(
            storage_config(f"storage.endpoint_url={proxy.url}", "storage.max_attempts=2", "storage.part_size_mb=5"),
            tmp_path,
        )
        if operation == "write":
            storage.write_bytes(uri, data)
        elif operation == "read":
            assert storage.read_bytes(uri) == data
        else:
            storage.upload_file(tmp_path / "src.bin", uri)

    assert proxy.seen[0] == proxy.seen[1], "the throttled request was sent again"
    assert direct.read_bytes(uri) == data


@pytest.mark.parametrize("throttled", [2, 10])
def test_retries_are_bounded_by_max_attempts(s3_endpoint: str, s3_bucket: str, tmp_path: Path, throttled: int) -> None:
    with S3FaultProxy(s3_endpoint, fail_first=throttled) as proxy:
        storage = Storage(storage_config(f"storage.endpoint_url={proxy.url}", "storage.max_attempts=2"), tmp_path)
        with pytest.raises(StorageError, match=f"write s3://{s3_bucket}/f.bin: S3 error SlowDown") as excinfo:
            storage.write_bytes(f"s3://{s3_bucket}/f.bin", b"x")

    assert type(excinfo.value) is StorageError
    assert len(proxy.seen) == 2, "max_attempts=2 means two requests, then give up"
    assert not Storage(storage_config(f"storage.endpoint_url={s3_endpoint}"), tmp_path).exists(
        f"s3://{s3_bucket}/f.bin"
    )


def test_errors_do_not_leak_the_secret_key(
    s3_endpoint: str,
    s3_endpoint_checking_auth: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG)

    def error_of(endpoint: str, action: Callable[[Storage], object], *overrides: str) -> StorageError:
        storage = Storage(storage_config(f"storage.endpoint_url={endpoint}", *overrides), tmp_path)
        with pytest.raises(StorageError) as excinfo:
            action(storage)
        return excinfo.value

    closed = f"http://127.0.0.1:{closed_port()}"
    with S3FaultProxy(s3_endpoint, fail_first=100) as throttling:
        errors = [
            error_of(s3_endpoint, lambda s: s.read_bytes("s3://no-such-bucket-7f3a/f.bin")),
            error_of(s3_endpoint_checking_auth, lambda s: s.write_bytes("s3://ckpt/f.bin", b"x")),
            error_of(closed, lambda s: s.exists("s3://ckpt/f.bin"), "storage.max_attempts=1"),
            error_of(throttling.url, lambda s: s.write_bytes("s3://ckpt/f.bin", b"x"), "storage.max_attempts=1"),
        ]

    assert [type(e) for e in errors] == [NotFoundError, PermissionDeniedError, EndpointUnreachableError, StorageError]
    for error in errors:
        for text in (str(error), repr(error), "".join(traceback.format_exception(error))):
            assert secret not in text
    assert secret not in caplog.text


# ---------------------------------------------------------------------------------------------------------
# Atomic publish under an interrupted transfer (real child processes, killed mid-way)

UPLOAD_IN_CHILD = """
import sys
from bifusion.components.config_schema import load_config
from bifusion.components.storage import Storage
source, uri, *overrides = sys.argv[1:]
Storage(load_config(["base"], overrides).storage).upload_file(source, uri)
"""

# RLIMIT_FSIZE makes the kernel kill the process with SIGXFSZ (Python ignores it by default, so restore the
# default action) as soon as a write crosses `limit` bytes: a crash at a known point in the middle of a write.
WRITE_IN_CHILD_UNTIL_KILLED = """
import resource, signal, sys
from pathlib import Path
from bifusion.components.config_schema import load_config
from bifusion.components.storage import Storage
method, source, uri, limit = sys.argv[1:]
storage = Storage(load_config(["base"]).storage)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
if method == "upload_file":
    storage.upload_file(source, uri)
else:
    storage.write_bytes(uri, Path(source).read_bytes())
"""


@pytest.mark.parametrize("previous", [None, b"complete old checkpoint"])
def test_upload_killed_mid_multipart_publishes_nothing(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, previous: bytes | None
) -> None:
    storage = Storage(storage_config(f"storage.endpoint_url={s3_endpoint}"), tmp_path)
    uri = f"s3://{s3_bucket}/run/model.pt"
    if previous is not None:
        storage.write_bytes(uri, previous)
    write_random_file(tmp_path / "model.pt", 15 * MiB)

    with S3FaultProxy(s3_endpoint, forward_parts=1) as proxy:
        child = subprocess.Popen(
            [sys.executable, "-c", UPLOAD_IN_CHILD, str(tmp_path / "model.pt"), uri,
             f"storage.endpoint_url={proxy.url}", "storage.part_size_mb=5"],
        )
        try:
            assert proxy.parts_forwarded.wait(timeout=30), "the child never stored its first part"
            assert child.poll() is None, "the upload must still be in flight when it is killed"
        finally:
            child.kill()
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    uploads = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["run/model.pt"], "a multipart upload was started and never completed"
    parts = client.list_parts(Bucket=s3_bucket, Key="run/model.pt", UploadId=uploads[0]["UploadId"])["Parts"]
    assert len(parts) == 1
    if previous is None:
        assert not storage.exists(uri)
        assert storage.list(f"s3://{s3_bucket}/run") == []
    else:
        assert storage.read_bytes(uri) == previous
        assert storage.info(uri).sha256 == sha256_of_bytes(previous)


@pytest.mark.parametrize("method", ["upload_file", "write_bytes"])
@pytest.mark.parametrize("previous", [None, b"complete old checkpoint"])
def test_local_write_killed_midway_publishes_nothing(tmp_path: Path, method: str, previous: bytes | None) -> None:
    storage = Storage(storage_config(), tmp_path)
    target = tmp_path / "store" / "model.pt"
    if previous is not None:
        storage.write_bytes(str(target), previous)
    write_random_file(tmp_path / "model.pt", 12 * MiB)
    limit = 3 * MiB

    child = subprocess.run(
        [sys.executable, "-c", WRITE_IN_CHILD_UNTIL_KILLED, method, str(tmp_path / "model.pt"), str(target),
         str(limit)],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=60,
    )

    assert child.returncode == -signal.SIGXFSZ
    leftovers = [p for p in target.parent.iterdir() if p.name.startswith(".model.pt.tmp-")]
    assert [p.stat().st_size for p in leftovers] == [limit], "the child died with a partial hidden temp file"
    if previous is None:
        assert not target.exists()
        assert not storage.exists(str(target))
        assert storage.list(str(target.parent)) == []
    else:
        assert storage.read_bytes(str(target)) == previous
        assert storage.list(str(target.parent)) == [str(target)]
