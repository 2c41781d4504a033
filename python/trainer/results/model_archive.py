"""A model version as one downloadable archive: the artifact's files and a manifest.

The archive is a tar file (POSIX pax):

    manifest.json        what this is: model version, run, dataset fingerprint,
                         snapshot, library versions, and the sha256 of every file
    model/model.json     the artifact's own manifest (its sha256 is the one the
                         model version recorded)
    model/<file>         every file model.json lists (head.skops, …)

Every file is read once, through one handle, into a private spool while it is
hashed, and checked against its recorded sha256; the archive is assembled from
those spools only (never from a path opened again), into an anonymous file whose
sha256 and size are announced before the first byte goes out and checked again
while it is sent. The archive's bytes depend only on what it holds (fixed order,
owner and times). Everything moves in chunks: memory stays flat for any model.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timezone

from trainer.core.blob_store import CHUNK_SIZE, ArtifactStore, verified_chunks
from trainer.core.errors import ArtifactError
from trainer.results.store import ModelVersion, ResultsStore, TrainingRun

FORMAT = "training-db-pipeline/model-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_DIRECTORY = "model"
MODEL_MANIFEST = "model.json"
MEDIA_TYPE = "application/x-tar"
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
# Member files up to this size are spooled in memory, larger ones on disk (TMPDIR).
_SPOOL_IN_MEMORY = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Member:
    name: str  # inside the archive
    uri: str  # in the artifact store
    size: int
    sha256: str


@dataclass
class ModelArchive:
    model_version: ModelVersion
    manifest: dict
    size: int
    sha256: str
    chunks: Iterator[bytes]
    _release: Callable[[], None] = lambda: None

    @property
    def filename(self) -> str:
        return f"{self.model_version.model_name}-v{self.model_version.version}.tar"

    def close(self) -> None:
        try:
            self.chunks.close()
        except ValueError:  # still running in another thread
            pass
        self._release()


def open_model_archive(store: ResultsStore, artifacts: ArtifactStore, model_version_id: int) -> ModelArchive:
    """Check every file of a model version, then stream them as one archive."""
    version = store.get_model_version_by_id(model_version_id)
    run = store.get_run(version.run_id)
    model_manifest_uri = artifacts.join(version.artifact_uri, MODEL_MANIFEST)
    raw_manifest, manifest_sha256 = _read_small(artifacts, model_manifest_uri)
    if manifest_sha256 != version.artifact_sha256:
        raise ArtifactError(
            f"model version {model_version_id}: {MODEL_MANIFEST} does not match its recorded sha256 "
            f"{version.artifact_sha256[:12]}…: it was altered"
        )
    try:
        listed = json.loads(raw_manifest)["files"]
        if not isinstance(listed, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"model version {model_version_id}: {MODEL_MANIFEST} lists no files") from exc

    spools: list = []
    try:
        first = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY)
        spools.append(first)
        first.write(raw_manifest)
        members = [_Member(f"{MODEL_DIRECTORY}/{MODEL_MANIFEST}", model_manifest_uri, len(raw_manifest), manifest_sha256)]
        for name, expected in sorted(listed.items()):
            _check_member_name(model_version_id, name)
            uri = artifacts.join(version.artifact_uri, name)
            spool = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY)
            spools.append(spool)
            size, actual = _spool(artifacts, uri, spool)
            if actual != expected:
                raise ArtifactError(
                    f"model version {model_version_id}: {name} does not match its sha256 in {MODEL_MANIFEST}"
                )
            members.append(_Member(f"{MODEL_DIRECTORY}/{name}", uri, size, actual))

        manifest = _archive_manifest(version, run, members)
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        mtime = int(version.created_at.replace(tzinfo=timezone.utc).timestamp())
        # Anonymous: no path reaches it, so what is sent is what was hashed here.
        archive = tempfile.TemporaryFile(prefix="model-archive-")
        spools.append(archive)
        digest = hashlib.sha256()
        for chunk in _tar_chunks(manifest_bytes, members, spools[:-1], mtime):
            digest.update(chunk)
            archive.write(chunk)
        size = archive.tell()
        archive.seek(0)
    except BaseException:
        for spool in spools:
            spool.close()
        raise
    for spool in spools[:-1]:
        spool.close()
    chunks = verified_chunks(archive, digest.hexdigest(), f"the archive of model version {model_version_id}")
    return ModelArchive(version, manifest, size, digest.hexdigest(), chunks, archive.close)


def _archive_manifest(version: ModelVersion, run: TrainingRun, members: list[_Member]) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version_id": version.model_version_id,
        "model_name": version.model_name,
        "version": version.version,
        "created_at": version.created_at.isoformat() + "Z",
        "artifact_uri": version.artifact_uri,
        "artifact_sha256": version.artifact_sha256,
        "run_id": run.run_id,
        "dataset_fingerprint": run.dataset_fingerprint,
        "dataset_as_of": None if run.dataset_as_of is None else run.dataset_as_of.isoformat() + "Z",
        "snapshot_uri": run.snapshot_uri,
        "snapshot_sha256": run.snapshot_sha256,
        "training_arguments": {key: value for key, value in run.params.items() if key != "library_versions"},
        "library_versions": run.params.get("library_versions"),
        "files": {member.name: {"sha256": member.sha256, "size": member.size} for member in members},
    }


def _check_member_name(model_version_id: int, name: object) -> None:
    """A file name from the stored manifest is data, not a path to follow."""
    if (
        not isinstance(name, str)
        or not name
        or name != posixpath.normpath(name)
        or name.startswith("/")
        # A fine-tuned encoder's files sit in subdirectories (encoder/1_Pooling/…); no part may be hidden.
        or any(not part or part.startswith(".") for part in name.split("/"))
        or "\\" in name
        or "\x00" in name
    ):
        raise ArtifactError(f"model version {model_version_id}: {MODEL_MANIFEST} lists an unsafe file name {name!r}")


def _read_small(artifacts: ArtifactStore, uri: str) -> tuple[bytes, str]:
    data = artifacts.read_bytes(uri)
    return data, hashlib.sha256(data).hexdigest()


def _spool(artifacts: ArtifactStore, uri: str, spool) -> tuple[int, str]:
    """Copy a stored file into ``spool`` through one handle; its size and the sha256 of what was read."""
    digest, size = hashlib.sha256(), 0
    with artifacts.open_read(uri) as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            spool.write(chunk)
    spool.seek(0)
    return size, digest.hexdigest()


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def _tar_chunks(manifest_bytes: bytes, members: list[_Member], spools: list, mtime: int) -> Iterator[bytes]:
    written = 0
    for piece in (_header(MANIFEST, len(manifest_bytes), mtime), manifest_bytes, _padding(len(manifest_bytes))):
        written += len(piece)
        yield piece
    for member, spool in zip(members, spools, strict=True):
        header = _header(member.name, member.size, mtime)
        written += len(header)
        yield header
        spool.seek(0)
        while chunk := spool.read(CHUNK_SIZE):
            written += len(chunk)
            yield chunk
        written += len(_padding(member.size))
        yield _padding(member.size)
    # Two zero blocks end the archive; tar pads the whole to a multiple of its record size.
    end = 2 * _BLOCK
    end += -(written + end) % _RECORD
    yield b"\0" * end
