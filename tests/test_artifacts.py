"""The blob store through real fsspec filesystems."""

from __future__ import annotations

import uuid

import pytest

from trainer.artifacts import ArtifactStore, sha256_hex
from trainer.errors import ArtifactError


@pytest.fixture(params=["path", "file-url", "memory"])
def store(request, tmp_path):
    if request.param == "path":
        return ArtifactStore(str(tmp_path / "store"))
    if request.param == "file-url":
        return ArtifactStore(f"file://{tmp_path}/store")
    return ArtifactStore(f"memory://test-{uuid.uuid4().hex}")


def test_write_then_read_round_trips_with_its_sha256(store):
    data = "naïve 🙂\n".encode() * 1000
    uri, digest = store.write_bytes("models/m/run-1/head.skops", data)
    assert digest == sha256_hex(data)
    assert store.read_bytes(uri) == data
    assert uri == store.uri("models/m/run-1/head.skops")
    assert store.join(store.uri("models/m/run-1"), "head.skops") == uri
    listing = store.fs.find(store.root)
    assert not [path for path in listing if ".partial-" in path]


@pytest.mark.parametrize(
    "hostile",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "s3://another-bucket/model.json",
        "{root}/../outside",
        "{root}/models/../../outside",
    ],
)
def test_uris_outside_the_root_are_refused(store, hostile):
    uri = hostile.format(root=store.uri("")).replace("//..", "/..")
    with pytest.raises(ArtifactError, match="outside the artifact store|not in the artifact store"):
        store.read_bytes(uri)


def test_relative_paths_with_dot_segments_are_refused(store):
    with pytest.raises(ArtifactError, match="must not contain"):
        store.write_bytes("models/../../escape", b"x")


def test_a_missing_artifact_is_reported(store):
    with pytest.raises(ArtifactError, match="missing from the store"):
        store.read_bytes(store.uri("models/none/model.json"))


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = ArtifactStore(str(blocker / "store"))
    with pytest.raises(ArtifactError, match="cannot write artifact"):
        store.write_bytes("a/b.bin", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
