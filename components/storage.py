"""One small storage API over local paths / `file://` URIs and `s3://` URIs.

Guarantees, on both backends:
- publishing is atomic: a reader sees the old content or the whole new content, never a part
  (local: temp file + `os.replace`; S3: an object or a multipart upload only appears when complete);
- the SHA-256 of each published file is stored (local: hidden `.<name>.sha256` sidecar; S3: object
  metadata `sha256`) and verified when the file is read or downloaded;
- errors say which URI failed and why (missing bucket/key, no permission, unreachable endpoint).

Credentials come only from the standard AWS chain (env, profile, instance role); they are never taken
from configs or logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import unquote, urlparse

from bifusion.components.config_schema import StorageConfig

log = logging.getLogger(__name__)

CHECKSUM_METADATA_KEY = "sha256"
_HASH_CHUNK = 8 * 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the cause."""


class NotFoundError(StorageError):
    """The bucket, key or file does not exist."""


class PermissionDeniedError(StorageError):
    """Credentials are missing or not allowed to do this."""


class EndpointUnreachableError(StorageError):
    """The S3 endpoint did not answer within the configured timeouts and retries."""


class ChecksumMismatchError(StorageError):
    """The bytes read do not match the SHA-256 stored when the file was published."""


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def join_uri(base: str, *parts: str) -> str:
    """Join URI or path segments with single slashes (`join_uri('s3://b/p/', 'a', 'b.bin')`).

    An empty base gives a relative path (`join_uri('', 'scans', 'x')` -> 'scans/x').
    """
    pieces = ([base.rstrip("/")] if base else []) + [p.strip("/") for p in parts if p]
    return "/".join(pieces)


def local_path(uri: str) -> Path:
    """Filesystem path of a `file://` URI or plain path."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{uri}: file:// URIs must be local (file:///abs/path)")
        return Path(unquote(parsed.path))
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported URI scheme (expected s3://, file:// or a path)")
    return Path(uri)


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri}: not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def sha256_of_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one published file."""

    uri: str
    size: int
    sha256: str | None  # None for files published by other tools


class LocalBackend:
    """Files on a local or mounted filesystem."""

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}.sha256")

    def _publish(self, path: Path, write: Any, checksum: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            sidecar_tmp = tmp.with_name(tmp.name + ".sha256")
            sidecar_tmp.write_text(checksum)
            os.replace(tmp, path)
            os.replace(sidecar_tmp, self._sidecar(path))
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".sha256")):
                leftover.unlink(missing_ok=True)

    def write_bytes(self, uri: str, data: bytes) -> None:
        self._publish(local_path(uri), lambda handle: handle.write(data), sha256_of_bytes(data))

    def upload_file(self, source: Path, uri: str) -> None:
        def copy(handle: IO[bytes]) -> None:
            with open(source, "rb") as src:
                while chunk := src.read(_HASH_CHUNK):
                    handle.write(chunk)

        self._publish(local_path(uri), copy, sha256_of_file(source))

    def stored_checksum(self, uri: str) -> str | None:
        sidecar = self._sidecar(local_path(uri))
        return sidecar.read_text().strip() if sidecar.is_file() else None

    def read_bytes(self, uri: str) -> bytes:
        path = local_path(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{uri}: no such file") from None
        except PermissionError as exc:
            raise PermissionDeniedError(f"{uri}: permission denied ({exc})") from None
        _verify(uri, self.stored_checksum(uri), sha256_of_bytes(data))
        return data

    def download_file(self, uri: str, target: Path) -> None:
        source = local_path(uri)
        if not source.is_file():
            raise NotFoundError(f"{uri}: no such file")
        expected = self.stored_checksum(uri)
        _write_local_verified(uri, target, expected, lambda tmp: _copy_file(source, tmp))

    def info(self, uri: str) -> ObjectInfo | None:
        path = local_path(uri)
        if not path.is_file():
            return None
        return ObjectInfo(uri, path.stat().st_size, self.stored_checksum(uri))

    def list(self, uri: str) -> Iterator[str]:
        root = local_path(uri)
        if root.is_file():
            yield uri
            return
        if not root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    relative = (Path(dirpath) / name).relative_to(root).as_posix()
                    yield join_uri(uri, relative)

    def delete(self, uri: str) -> None:
        path = local_path(uri)
        path.unlink(missing_ok=True)
        self._sidecar(path).unlink(missing_ok=True)


class S3Backend:
    """Objects on S3 or an S3-compatible endpoint (MinIO, moto, Ceph), through boto3."""

    def __init__(self, config: StorageConfig):
        self.config = config
        self._clients: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        # boto3 clients are thread-safe but must not cross a fork: keep one per process.
        pid = os.getpid()
        with self._lock:
            if pid not in self._clients:
                self._clients[pid] = self._make_client()
            return self._clients[pid]

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        cfg = self.config
        boto_config = BotoConfig(
            # botocore's "max_attempts" counts retries after the first request; "total_max_attempts" counts them all.
            retries={"total_max_attempts": cfg.max_attempts, "mode": "standard"},
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.read_timeout_s,
            s3={"addressing_style": cfg.addressing_style},
            max_pool_connections=max(10, cfg.max_concurrency * 2),
        )
        return boto3.session.Session().client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, config=boto_config
        )

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        part = self.config.part_size_mb * 1024 * 1024
        return TransferConfig(
            multipart_threshold=part, multipart_chunksize=part, max_concurrency=self.config.max_concurrency
        )

    def _call(self, uri: str, action: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:  # translated into one of our errors, with the URI and the cause
            raise self._translate(uri, action, exc) from exc

    def _translate(self, uri: str, action: str, exc: Exception) -> StorageError:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )
        from boto3.exceptions import S3UploadFailedError

        endpoint = self.client.meta.endpoint_url
        if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
            inner = exc.__context__
            if isinstance(inner, Exception):
                return self._translate(uri, action, inner)
        if isinstance(exc, NoCredentialsError):
            return PermissionDeniedError(
                f"{action} {uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE or an instance role)"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)):
            return EndpointUnreachableError(
                f"{action} {uri}: S3 endpoint {endpoint} unreachable after {self.config.max_attempts} attempts ({exc})"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            bucket, key = split_s3_uri(uri)
            if code == "NoSuchBucket" or (code in ("404", "NotFound", "NoSuchKey") and not self._bucket_exists(bucket)):
                return NotFoundError(f"{action} {uri}: bucket '{bucket}' does not exist at {endpoint}")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFoundError(f"{action} {uri}: no object with key '{key}'")
            if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return PermissionDeniedError(f"{action} {uri}: permission denied ({code}); check the credentials")
            return StorageError(f"{action} {uri}: S3 error {code or status}: {exc}")
        if isinstance(exc, StorageError):
            return exc
        return StorageError(f"{action} {uri}: {type(exc).__name__}: {exc}")

    def _bucket_exists(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
            return True
        except ClientError as exc:
            return str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound")

    def write_bytes(self, uri: str, data: bytes) -> None:
        import io

        bucket, key = split_s3_uri(uri)
        metadata = {CHECKSUM_METADATA_KEY: sha256_of_bytes(data)}
        if len(data) < self.config.part_size_mb * 1024 * 1024:
            self._call(uri, "write", self.client.put_object, Bucket=bucket, Key=key, Body=data, Metadata=metadata)
        else:
            self._call(
                uri, "write", self.client.upload_fileobj, Fileobj=io.BytesIO(data), Bucket=bucket, Key=key,
                ExtraArgs={"Metadata": metadata}, Config=self._transfer_config(),
            )

    def upload_file(self, source: Path, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        metadata = {CHECKSUM_METADATA_KEY: sha256_of_file(source)}
        # A multipart upload only becomes visible on CompleteMultipartUpload; s3transfer aborts it on error.
        self._call(
            uri, "upload", self.client.upload_file, Filename=str(source), Bucket=bucket, Key=key,
            ExtraArgs={"Metadata": metadata}, Config=self._transfer_config(),
        )

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        response = self._call(uri, "read", self.client.get_object, Bucket=bucket, Key=key)
        data = self._call(uri, "read", response["Body"].read)
        _verify(uri, response.get("Metadata", {}).get(CHECKSUM_METADATA_KEY), sha256_of_bytes(data))
        return data

    def download_file(self, uri: str, target: Path) -> None:
        bucket, key = split_s3_uri(uri)
        info = self.info(uri)
        if info is None:
            raise NotFoundError(f"download {uri}: no object with key '{key}'")
        _write_local_verified(uri, target, info.sha256, lambda tmp: self._download_hashed(uri, bucket, key, tmp))

    def _download_hashed(self, uri: str, bucket: str, key: str, tmp: Path) -> str:
        """Download into `tmp`, hashing the bytes as they arrive; returns their SHA-256."""
        with open(tmp, "wb") as handle:
            writer = _HashingWriter(handle)
            self._call(
                uri, "download", self.client.download_fileobj, Bucket=bucket, Key=key, Fileobj=writer,
                Config=self._transfer_config(),
            )
        return writer.hexdigest()

    def info(self, uri: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(uri)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchKey", "NotFound") and self._bucket_exists(bucket):
                return None
            raise self._translate(uri, "stat", exc) from exc
        except Exception as exc:
            raise self._translate(uri, "stat", exc) from exc
        return ObjectInfo(uri, head["ContentLength"], head.get("Metadata", {}).get(CHECKSUM_METADATA_KEY))

    def list(self, uri: str) -> Iterator[str]:
        bucket, prefix = split_s3_uri(uri)
        if prefix and not prefix.endswith("/"):
            if self.info(uri) is not None:
                yield uri
                return
            prefix += "/"
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(uri, "list", lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix)))
        for page in pages:
            for item in page.get("Contents", []):
                yield f"s3://{bucket}/{item['Key']}"

    def delete(self, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        self._call(uri, "delete", self.client.delete_object, Bucket=bucket, Key=key)


def _verify(uri: str, expected: str | None, actual: str) -> None:
    if expected is not None and expected != actual:
        raise ChecksumMismatchError(
            f"{uri}: SHA-256 mismatch (stored {expected}, read {actual}); the file is corrupt or was "
            "modified outside bifusion's storage API"
        )


class _HashingWriter:
    """Write-only file wrapper that hashes the bytes passing through it.

    It has no `seek` on purpose: s3transfer then writes a multipart download in order (parts that arrive
    early wait in memory, at most about `max_concurrency` parts), so the SHA-256 is computed while the
    download runs instead of in a second pass over the file (that pass cost ~15% of download throughput).
    """

    def __init__(self, handle: IO[bytes]):
        self._handle = handle
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._handle.write(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _copy_file(source: Path, target: Path) -> str:
    """Copy `source` to `target`; returns the SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(_HASH_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def _write_local_verified(uri: str, target: Path, expected: str | None, fetch: Any) -> None:
    """Fetch into a temp file beside `target`, verify its SHA-256, then move it into place atomically.

    `fetch(tmp)` writes the file and returns the SHA-256 of the bytes it wrote.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        actual = fetch(tmp)
        if expected is not None:
            _verify(uri, expected, actual)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class Storage:
    """Read, write, list and transfer files by URI; picks the local or S3 backend per URI."""

    def __init__(self, config: StorageConfig, workdir: str | Path = "."):
        self.config = config
        self.workdir = Path(workdir)
        self._local = LocalBackend()
        self._s3 = S3Backend(config)

    def resolve(self, uri: str) -> str:
        """Absolute form of a URI: relative plain paths are taken inside the workdir."""
        if is_s3_uri(uri) or uri.startswith("file://"):
            return uri
        path = Path(uri)
        return str(path if path.is_absolute() else (self.workdir / path).resolve())

    @property
    def root(self) -> str:
        """Root URI for stage outputs (`storage.root`, resolved)."""
        return self.resolve(self.config.root)

    def _backend(self, uri: str) -> LocalBackend | S3Backend:
        return self._s3 if is_s3_uri(uri) else self._local

    def write_bytes(self, uri: str, data: bytes) -> None:
        uri = self.resolve(uri)
        self._backend(uri).write_bytes(uri, data)

    def read_bytes(self, uri: str) -> bytes:
        uri = self.resolve(uri)
        return self._backend(uri).read_bytes(uri)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_text(uri, json.dumps(obj, indent=2, sort_keys=True))

    def read_json(self, uri: str) -> Any:
        text = self.read_text(uri)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StorageError(f"{uri}: not valid JSON ({exc})") from exc

    def exists(self, uri: str) -> bool:
        uri = self.resolve(uri)
        return self._backend(uri).info(uri) is not None

    def info(self, uri: str) -> ObjectInfo | None:
        uri = self.resolve(uri)
        return self._backend(uri).info(uri)

    def list(self, uri: str) -> list[str]:
        """Every published file under `uri` (recursive, sorted), as full URIs."""
        uri = self.resolve(uri)
        return sorted(self._backend(uri).list(uri))

    def delete(self, uri: str) -> None:
        uri = self.resolve(uri)
        self._backend(uri).delete(uri)

    def upload_file(self, source: str | Path, uri: str) -> None:
        source = Path(source)
        if not source.is_file():
            raise NotFoundError(f"upload {source} -> {uri}: no such local file")
        uri = self.resolve(uri)
        self._backend(uri).upload_file(source, uri)

    def download_file(self, uri: str, target: str | Path) -> None:
        uri = self.resolve(uri)
        self._backend(uri).download_file(uri, Path(target))

    def upload_dir(self, source: str | Path, uri: str) -> list[str]:
        """Publish every file under a local folder (hidden files skipped); returns the URIs written."""
        source = Path(source)
        if not source.is_dir():
            raise NotFoundError(f"upload {source} -> {uri}: no such local folder")
        written = []
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source)
            if any(part.startswith(".") for part in relative.parts):
                continue
            target = join_uri(uri, relative.as_posix())
            self.upload_file(path, target)
            written.append(target)
        return written

    def download_dir(self, uri: str, target: str | Path) -> list[Path]:
        """Fetch every file under `uri` into a local folder, verifying each; returns the local paths."""
        uri = self.resolve(uri)
        files = self.list(uri)
        if not files:
            raise NotFoundError(f"download {uri}: nothing published under this prefix")
        paths = []
        for file_uri in files:
            relative = file_uri[len(uri):].lstrip("/")
            local = Path(target) / relative
            self.download_file(file_uri, local)
            paths.append(local)
        return paths
