"""The blob store for artifacts, through fsspec: a local path, ``file://``,
``memory://`` or ``s3://`` (TRAINER_ARTIFACTS_URL).

Files are written under a temporary name and moved into place when complete, and
every read checks that the URI lies inside the store's root: a URI stored in the
database is never trusted to point anywhere else.
"""

from __future__ import annotations

import hashlib
import posixpath
import uuid

import fsspec

from trainer.errors import ArtifactError, ConfigurationError


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    def __init__(self, url: str):
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigurationError(f"cannot use artifact store {url!r} (TRAINER_ARTIFACTS_URL): {exc}") from exc
        self.root = root.rstrip("/") or "/"
        self.url = url

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
        return normalized

    def write_bytes(self, relative_path: str, data: bytes) -> tuple[str, str]:
        """Write a file atomically; return its URI and sha256."""
        final = self._path(relative_path)
        directory = posixpath.dirname(final)
        temporary = posixpath.join(directory, f".{posixpath.basename(final)}.partial-{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(directory, exist_ok=True)
            with self.fs.open(temporary, "wb") as handle:
                handle.write(data)
            self.fs.mv(temporary, final)
        except OSError as exc:
            self._discard(temporary)
            raise ArtifactError(f"cannot write artifact {self.fs.unstrip_protocol(final)}: {exc}") from exc
        return self.fs.unstrip_protocol(final), sha256_hex(data)

    def read_bytes(self, uri: str) -> bytes:
        path = self.path_of(uri)
        try:
            with self.fs.open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError as exc:
            raise ArtifactError(f"artifact {uri} is missing from the store") from exc
        except OSError as exc:
            raise ArtifactError(f"cannot read artifact {uri}: {exc}") from exc

    def join(self, uri: str, name: str) -> str:
        """The URI of ``name`` inside the directory ``uri`` (both inside the store)."""
        return self.fs.unstrip_protocol(posixpath.join(self.path_of(uri), name))

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except OSError:
            pass
