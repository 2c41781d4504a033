"""The blob store for artifacts, through fsspec: a local path, ``file://``,
``memory://`` or ``s3://`` (TRAINER_ARTIFACTS_URL).

Files are written under a temporary name and moved into place when complete, and
every read, open and delete checks that the URI lies inside the store's root: a URI
stored in the database is never trusted to point anywhere else.

S3 (and S3-compatible servers such as MinIO) is configured only by the environment,
as every AWS tool is: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) for a
server other than AWS. botocore reads them itself, so this module holds no
credentials and no endpoint of its own.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO

import fsspec

from trainer.core.errors import ArtifactError, ConfigurationError

CHUNK_SIZE = 1024 * 1024  # bytes read at a time when hashing: a model file never has to fit in memory
S3_PROTOCOLS = ("s3", "s3a")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified_chunks(handle: IO[bytes], sha256: str, name: str) -> Iterator[bytes]:
    """The rest of an open handle's bytes, hashed as they are read, for a response
    that streams them. A mismatch raises before the stream ends: too late for an
    error status, so the response is cut off, never completed (the client never sees
    a well-formed end)."""
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK_SIZE):
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != sha256:
        raise ArtifactError(f"{name} changed while it was being sent")


@dataclass(frozen=True)
class StoredFile:
    """One file in the store, as a garbage collector or a snapshot writer sees it."""

    uri: str
    relative_path: str
    size: int
    modified: datetime | None  # UTC; None when the filesystem does not say


class ArtifactStore:
    def __init__(self, url: str):
        self.url = url
        self.is_s3 = fsspec.utils.get_protocol(url) in S3_PROTOCOLS
        self.is_local = fsspec.utils.get_protocol(url) in ("file", "local")
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **self._filesystem_options())
        except (ImportError, ValueError) as exc:
            raise ConfigurationError(f"cannot use artifact store {url!r} (TRAINER_ARTIFACTS_URL): {exc}") from exc
        self.root = root.rstrip("/") or "/"
        if self.is_s3 and self.root == "/":
            raise ConfigurationError(f"artifact store {url!r} (TRAINER_ARTIFACTS_URL) must name a bucket")
        self._errors = (OSError, *self._client_errors())

    def _filesystem_options(self) -> dict:
        """For S3: a filesystem of our own, without a listings cache.

        fsspec otherwise hands out one cached instance per set of arguments, created
        with whatever environment was current the first time; and a cached listing
        would hide files other processes wrote or deleted, which a garbage collector
        must see.
        """
        if self.is_s3:
            return {"skip_instance_cache": True, "use_listings_cache": False}
        return {}

    def _client_errors(self) -> tuple[type[BaseException], ...]:
        """botocore's own exceptions (no credentials, no connection) are not OSErrors."""
        if not self.is_s3:
            return ()
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def uri(self, relative_path: str) -> str:
        """The full URI of a path relative to the store's root."""
        return self.fs.unstrip_protocol(self._path(relative_path))

    def _path(self, relative_path: str) -> str:
        parts = [part for part in relative_path.split("/") if part]
        if any(part in (".", "..") for part in parts):
            raise ArtifactError(f"artifact path {relative_path!r} must not contain '.' or '..'")
        return posixpath.join(self.root, *parts)

    def path_of(self, uri: str) -> str:
        """The store path of a URI, refusing anything outside the store's root."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        path = uri
        for protocol in protocols:
            prefix = f"{protocol}://"
            if uri.startswith(prefix):
                path = uri[len(prefix) :]
                break
        else:
            if "://" in uri:
                raise ArtifactError(f"artifact {uri!r} is not in the artifact store {self.url!r}")
        path = self.fs._strip_protocol(path)
        normalized = posixpath.normpath(path)
        inside = normalized == self.root or normalized.startswith(self.root.rstrip("/") + "/")
        if not inside or ".." in path.split("/"):
            raise ArtifactError(f"artifact {uri!r} is outside the artifact store {self.url!r}")
        if self.is_local and not _resolves_inside(normalized, self.root):
            raise ArtifactError(f"artifact {uri!r} leads outside the artifact store {self.url!r} through a symlink")
        return normalized

    def _relative(self, path: str) -> str:
        return path[len(self.root.rstrip("/")) + 1 :]

    def write_bytes(self, relative_path: str, data: bytes) -> tuple[str, str]:
        """Write a file atomically; return its URI and sha256."""
        return self._write_chunks(relative_path, [data]), sha256_hex(data)

    def write_file(self, relative_path: str, local_path: str | os.PathLike) -> tuple[str, str]:
        """Copy a local file into the store atomically, CHUNK_SIZE bytes at a time
        (it never has to fit in memory); return its URI and the sha256 of what was copied."""
        digest = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            with open(local_path, "rb") as source:
                while chunk := source.read(CHUNK_SIZE):
                    digest.update(chunk)
                    yield chunk

        return self._write_chunks(relative_path, chunks()), digest.hexdigest()

    def _write_chunks(self, relative_path: str, chunks: Iterable[bytes]) -> str:
        final = self._path(relative_path)
        uri = self.fs.unstrip_protocol(final)
        directory = posixpath.dirname(final)
        temporary = posixpath.join(directory, f".{posixpath.basename(final)}.partial-{uuid.uuid4().hex}")
        try:
            with self._failures("write", uri):
                # On S3 there are no directories, and s3fs's makedirs would create a missing bucket.
                if not self.is_s3:
                    self.fs.makedirs(directory, exist_ok=True)
                with self.fs.open(temporary, "wb") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
                # Checked just before the move: a local move would put the file inside the
                # directory, and on S3 the object would shadow everything under it.
                if self.fs.isdir(final):
                    raise ArtifactError(f"cannot write artifact {uri}: a directory of that name exists")
                self.fs.mv(temporary, final)
        except BaseException:
            self._discard(temporary)
            raise
        return uri

    def read_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as handle, self._failures("read", uri):
            return handle.read()

    def open_read(self, uri: str) -> IO[bytes]:
        """A binary file object for reading a stored file in pieces (the caller closes it)."""
        path = self.path_of(uri)
        with self._failures("read", uri):
            return self.fs.open(path, "rb")

    def sha256_of(self, uri: str) -> str:
        """The sha256 of a stored file, read in chunks of CHUNK_SIZE."""
        digest = hashlib.sha256()
        with self.open_read(uri) as handle, self._failures("read", uri):
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
        return digest.hexdigest()

    def exists(self, relative_path: str) -> bool:
        """Whether a file (or a directory, on S3 a prefix) exists at a path relative to the root.

        Asks for the file's details rather than calling ``fs.exists``, which on S3
        answers False for a bucket that does not exist instead of saying so.
        """
        path = self._path(relative_path)
        with self._failures("check", self.fs.unstrip_protocol(path)):
            try:
                self.fs.info(path)
            except (FileNotFoundError, NotADirectoryError) as exc:
                if self._bucket_is_missing(exc):
                    raise
                return False
        return True

    def list_files(self, prefix: str = "") -> list[StoredFile]:
        """Every file under the root (or a directory in it), recursively, sorted by path.

        Hidden files are included, among them the ``.partial-`` files a write that
        died midway left behind. A prefix that does not exist lists nothing. The
        empty ``name/`` objects other S3 tools create as folders are not files.
        """
        base = self._path(prefix)
        with self._failures("list", self.fs.unstrip_protocol(base)):
            found = self.fs.find(base, detail=True)
        files = [
            self._stored_file(path, info)
            for path, info in found.items()
            if path.startswith(self.root.rstrip("/") + "/") and not path.endswith("/")
        ]
        return sorted(files, key=lambda stored: stored.relative_path)

    def _stored_file(self, path: str, info: dict) -> StoredFile:
        size = int(info.get("size") or 0)
        return StoredFile(self.fs.unstrip_protocol(path), self._relative(path), size, _modified(info))

    def delete(self, uri: str) -> None:
        """Delete one stored file. A file already gone is not an error: two collectors may race."""
        path = self.path_of(uri)
        if path == self.root:
            raise ArtifactError(f"refusing to delete the root of the artifact store {self.url!r}")
        with self._failures("delete", uri):
            try:
                self.fs.rm_file(path)
            except FileNotFoundError as exc:
                if self._bucket_is_missing(exc):
                    raise

    def relative_path(self, uri: str) -> str:
        """The path of a URI inside the store, relative to its root."""
        return self._relative(self.path_of(uri))

    def join(self, uri: str, name: str) -> str:
        """The URI of ``name`` inside the directory ``uri`` (both inside the store)."""
        return self.fs.unstrip_protocol(posixpath.join(self.path_of(uri), name))

    @contextmanager
    def _failures(self, action: str, uri: str) -> Iterator[None]:
        """Turn the filesystem's and the S3 client's exceptions into one line a user can act on."""
        try:
            yield
        except self._errors as exc:
            if self._bucket_is_missing(exc):
                raise ConfigurationError(
                    f"artifact store {self.url} (TRAINER_ARTIFACTS_URL): bucket {self.root.split('/')[0]!r} "
                    "does not exist at the S3 endpoint (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS)"
                ) from exc
            if type(exc).__name__ == "NoCredentialsError":
                raise ConfigurationError(
                    f"artifact store {self.url} (TRAINER_ARTIFACTS_URL): no S3 credentials found; "
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ) from exc
            if isinstance(exc, FileNotFoundError) and action != "write":
                raise ArtifactError(f"artifact {uri} is missing from the store") from exc
            raise ArtifactError(f"cannot {action} artifact {uri}: {_one_line(exc)}") from exc

    def _bucket_is_missing(self, exc: BaseException) -> bool:
        """Whether an S3 failure comes from the store's bucket not existing (not from a missing key)."""
        if not self.is_s3 or not isinstance(exc, FileNotFoundError):
            return False
        response = getattr(exc.__cause__, "response", None) or {}
        if response.get("Error", {}).get("Code") == "NoSuchBucket":
            return True
        try:
            self.fs.info(self.root.split("/")[0])
        except FileNotFoundError:
            return True
        except self._errors:
            return False
        return False

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except self._errors:
            pass


def _resolves_inside(path: str, root: str) -> bool:
    """Whether ``path``, with every symlink on the way followed, stays under ``root``
    (itself resolved: the root may legitimately live behind a symlink)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _modified(info: dict) -> datetime | None:
    """The last-modified time in a listing entry: S3 gives a datetime, local and memory a timestamp."""
    value = info.get("LastModified") or info.get("mtime") or info.get("created")
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
