"""The blob store through real fsspec filesystems, S3 included: a real S3-compatible
server (moto, in its own process) reached over HTTP by s3fs, as production would."""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from trainer.core.blob_store import CHUNK_SIZE, ArtifactStore, StoredFile, sha256_hex
from trainer.core.errors import ArtifactError, ConfigurationError

S3_PREFIX = "artifacts"  # the store lives below a prefix, so the rest of its bucket is "outside"


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The moto server's AWS_* variables, and no other AWS_* variable of the developer's."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(params=["path", "file-url", "memory", "s3"])
def store(request, tmp_path):
    if request.param == "path":
        return ArtifactStore(str(tmp_path / "store"))
    if request.param == "file-url":
        return ArtifactStore(f"file://{tmp_path}/store")
    if request.param == "memory":
        return ArtifactStore(f"memory://test-{uuid.uuid4().hex}")
    server = request.getfixturevalue("s3_env")
    return ArtifactStore(f"s3://{server.new_bucket()}/{S3_PREFIX}")


def partial_files(store: ArtifactStore) -> list[str]:
    return [stored.relative_path for stored in store.list_files() if ".partial-" in stored.relative_path]


def test_write_then_read_round_trips_with_its_sha256(store):
    data = "naïve 🙂\n".encode() * 1000
    uri, digest = store.write_bytes("models/m/run-1/head.skops", data)
    assert digest == sha256_hex(data)
    assert store.read_bytes(uri) == data
    assert uri == store.uri("models/m/run-1/head.skops")
    assert store.join(store.uri("models/m/run-1"), "head.skops") == uri
    listing = store.fs.find(store.root)
    assert not [path for path in listing if ".partial-" in path]


def test_an_overwrite_replaces_the_file(store):
    first, _ = store.write_bytes("manifest.json", b"first")
    second, _ = store.write_bytes("manifest.json", b"second, longer")
    assert first == second
    assert store.read_bytes(second) == b"second, longer"
    assert [stored.relative_path for stored in store.list_files()] == ["manifest.json"]


@pytest.mark.parametrize(
    "hostile",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "s3://another-bucket/model.json",
        "{root}/../outside",
        "{root}/models/../../outside",
        "{root}-sibling/model.json",
    ],
)
def test_uris_outside_the_root_are_refused(store, hostile):
    uri = hostile.format(root=store.uri("").rstrip("/")).replace("//..", "/..")
    with pytest.raises(ArtifactError, match="outside the artifact store|not in the artifact store"):
        store.read_bytes(uri)
    with pytest.raises(ArtifactError, match="outside the artifact store|not in the artifact store"):
        store.open_read(uri)
    with pytest.raises(ArtifactError, match="outside the artifact store|not in the artifact store"):
        store.sha256_of(uri)
    with pytest.raises(ArtifactError, match="outside the artifact store|not in the artifact store"):
        store.delete(uri)


def test_relative_paths_with_dot_segments_are_refused(store):
    with pytest.raises(ArtifactError, match="must not contain"):
        store.write_bytes("models/../../escape", b"x")
    with pytest.raises(ArtifactError, match="must not contain"):
        store.exists("models/../../escape")
    with pytest.raises(ArtifactError, match="must not contain"):
        store.list_files("..")


def test_a_missing_artifact_is_reported(store):
    missing = store.uri("models/none/model.json")
    with pytest.raises(ArtifactError, match="missing from the store"):
        store.read_bytes(missing)
    with pytest.raises(ArtifactError, match="missing from the store"):
        store.open_read(missing)
    with pytest.raises(ArtifactError, match="missing from the store"):
        store.sha256_of(missing)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = ArtifactStore(str(blocker / "store"))
    with pytest.raises(ArtifactError, match="cannot write artifact"):
        store.write_bytes("a/b.bin", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_write_over_a_directory_fails_and_leaves_no_partial_file(store):
    """The temporary file is written first, so a failure at the move must remove it."""
    inner, _ = store.write_bytes("models/m/head.skops", b"head")
    with pytest.raises(ArtifactError, match="a directory of that name exists"):
        store.write_bytes("models/m", b"would hide the directory")
    assert partial_files(store) == []
    assert [stored.relative_path for stored in store.list_files()] == ["models/m/head.skops"]
    assert store.read_bytes(inner) == b"head"


def test_exists_tells_files_and_directories_from_nothing(store):
    store.write_bytes("models/m/run-1/head.skops", b"head")
    assert store.exists("models/m/run-1/head.skops")
    assert store.exists("models/m")
    assert not store.exists("models/m/run-1/model.json")
    assert not store.exists("models/m2")
    assert not store.exists("models/m/run-1/head.skops/deeper")


def test_list_files_lists_every_file_under_a_prefix(store):
    before = datetime.now(timezone.utc)
    head, _ = store.write_bytes("models/m/run-1/head.skops", b"h" * 10)
    store.write_bytes("models/m/run-1/model.json", b"{}")
    store.write_bytes("models/m/run-2/model.json", b"{ }")
    store.write_bytes("models/m2/run-1/model.json", b"not under models/m")
    store.write_bytes("top.txt", b"top")

    files = store.list_files()
    assert [stored.relative_path for stored in files] == [
        "models/m/run-1/head.skops",
        "models/m/run-1/model.json",
        "models/m/run-2/model.json",
        "models/m2/run-1/model.json",
        "top.txt",
    ]
    assert files[0] == StoredFile(head, "models/m/run-1/head.skops", 10, files[0].modified)
    assert all(stored.uri == store.uri(stored.relative_path) for stored in files)
    assert [stored.size for stored in files] == [10, 2, 3, 18, 3]
    for stored in files:
        # S3 keeps whole seconds; a minute either way allows for that and for slow machines.
        assert stored.modified is not None and stored.modified.tzinfo is not None
        assert before - timedelta(minutes=1) <= stored.modified <= datetime.now(timezone.utc) + timedelta(minutes=1)

    under = [stored.relative_path for stored in store.list_files("models/m")]
    assert under == ["models/m/run-1/head.skops", "models/m/run-1/model.json", "models/m/run-2/model.json"]
    assert [stored.relative_path for stored in store.list_files("models/m/run-2/")] == ["models/m/run-2/model.json"]


def test_list_files_of_a_missing_prefix_or_empty_store_is_empty(store):
    assert store.list_files() == []
    store.write_bytes("models/m/model.json", b"{}")
    assert store.list_files("models/none") == []
    assert store.list_files("models/m/model.json/deeper") == []


def test_list_files_shows_partial_files_a_dead_writer_left(store):
    """A garbage collector must see them to remove them."""
    store.write_bytes("models/m/model.json", b"{}")
    leftover = store._path(f"models/m/.model.json.partial-{uuid.uuid4().hex}")
    store.fs.pipe_file(leftover, b"half")
    assert partial_files(store) == [store._relative(leftover)]
    assert store.exists(store._relative(leftover))


def test_another_process_changes_are_seen_at_once(store):
    """No listing cache: a collector must not delete, or keep, files by a stale listing."""
    store.write_bytes("models/m/model.json", b"{}")
    assert store.exists("models/m/model.json")
    assert len(store.list_files()) == 1
    other = ArtifactStore(store.url)
    other.delete(other.uri("models/m/model.json"))
    other.write_bytes("models/m/head.skops", b"head")
    assert not store.exists("models/m/model.json")
    assert [stored.relative_path for stored in store.list_files()] == ["models/m/head.skops"]


def test_delete_removes_one_file_and_tolerates_it_being_gone(store):
    keep, _ = store.write_bytes("models/m/run-1/head.skops", b"keep")
    gone, _ = store.write_bytes("models/m/run-1/model.json", b"{}")
    store.delete(gone)
    assert not store.exists("models/m/run-1/model.json")
    assert [stored.uri for stored in store.list_files()] == [keep]
    with pytest.raises(ArtifactError, match="missing from the store"):
        store.read_bytes(gone)
    store.delete(gone)  # a second collector got there first
    assert store.read_bytes(keep) == b"keep"


def test_delete_refuses_the_root(store):
    store.write_bytes("model.json", b"{}")
    with pytest.raises(ArtifactError, match="refusing to delete the root"):
        store.delete(store.uri(""))
    assert store.exists("model.json")


def test_delete_outside_the_root_touches_nothing(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("precious")
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(ArtifactError, match="outside the artifact store"):
        store.delete(f"{store.uri('')}/../outside")
    with pytest.raises(ArtifactError, match="outside the artifact store"):
        store.delete(str(outside))
    assert outside.read_text() == "precious"


def test_sha256_of_reads_a_file_larger_than_a_chunk(store):
    data = os.urandom(CHUNK_SIZE * 2 + 12345)
    uri, digest = store.write_bytes("big.bin", data)
    assert store.sha256_of(uri) == digest == hashlib.sha256(data).hexdigest()
    store.write_bytes("empty.bin", b"")
    assert store.sha256_of(store.uri("empty.bin")) == hashlib.sha256(b"").hexdigest()


def test_open_read_streams_a_file_in_pieces(store):
    data = bytes(range(256)) * 1000
    uri, _ = store.write_bytes("exports/data.bin", data)
    with store.open_read(uri) as handle:
        pieces = [handle.read(1000)]
        while piece := handle.read(65536):
            pieces.append(piece)
    assert len(pieces) > 2
    assert b"".join(pieces) == data


# S3 only: what the server itself holds, and the S3 configuration.


def test_s3_writes_leave_only_the_final_objects_on_the_server(s3_env):
    bucket = s3_env.new_bucket()
    store = ArtifactStore(f"s3://{bucket}/{S3_PREFIX}")
    store.write_bytes("models/m/run-1/head.skops", b"head")
    store.write_bytes("models/m/run-1/model.json", b"{}")
    assert s3_env.keys(bucket) == [f"{S3_PREFIX}/models/m/run-1/head.skops", f"{S3_PREFIX}/models/m/run-1/model.json"]
    store.delete(store.uri("models/m/run-1/head.skops"))
    assert s3_env.keys(bucket) == [f"{S3_PREFIX}/models/m/run-1/model.json"]


def test_s3_folder_markers_of_other_tools_are_not_listed_as_files(s3_env):
    bucket = s3_env.new_bucket()
    store = ArtifactStore(f"s3://{bucket}/{S3_PREFIX}")
    s3_env.client().put_object(Bucket=bucket, Key=f"{S3_PREFIX}/models/", Body=b"")
    uri, _ = store.write_bytes("models/model.json", b"{}")
    assert [stored.uri for stored in store.list_files()] == [uri]
    assert store.exists("models")


def test_s3_refuses_a_uri_in_another_bucket_even_with_the_same_prefix(s3_env):
    mine, theirs = s3_env.new_bucket(), s3_env.new_bucket()
    store = ArtifactStore(f"s3://{mine}/{S3_PREFIX}")
    other = ArtifactStore(f"s3://{theirs}/{S3_PREFIX}")
    their_uri, _ = other.write_bytes("model.json", b"theirs")
    for uri in (their_uri, f"s3://{mine}-x/{S3_PREFIX}/model.json", f"s3://{mine}/{S3_PREFIX}/../{theirs}"):
        with pytest.raises(ArtifactError, match="outside the artifact store"):
            store.read_bytes(uri)
        with pytest.raises(ArtifactError, match="outside the artifact store"):
            store.delete(uri)
    assert s3_env.keys(theirs) == [f"{S3_PREFIX}/model.json"]


def test_s3_a_missing_bucket_is_one_clear_line_and_is_not_created(s3_env):
    bucket = f"missing-{uuid.uuid4().hex[:16]}"
    store = ArtifactStore(f"s3://{bucket}/{S3_PREFIX}")
    attempts = [
        lambda: store.write_bytes("model.json", b"{}"),
        lambda: store.read_bytes(store.uri("model.json")),
        lambda: store.list_files(),
        lambda: store.exists("model.json"),
        lambda: store.delete(store.uri("model.json")),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigurationError) as raised:
            attempt()
        message = str(raised.value)
        assert f"bucket '{bucket}' does not exist" in message
        assert "\n" not in message
    assert bucket not in [entry["Name"] for entry in s3_env.client().list_buckets()["Buckets"]]


def test_s3_without_credentials_says_which_variables_to_set(s3_env, monkeypatch):
    bucket = s3_env.new_bucket()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = ArtifactStore(f"s3://{bucket}/{S3_PREFIX}")
    with pytest.raises(ConfigurationError, match="no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET"):
        store.write_bytes("model.json", b"{}")
    with pytest.raises(ConfigurationError, match="no S3 credentials"):
        store.list_files()
    assert s3_env.keys(bucket) == []


def test_s3_endpoint_also_comes_from_the_generic_aws_endpoint_variable(s3_env, monkeypatch):
    """botocore reads AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL: the store adds no variable of its own."""
    bucket = s3_env.new_bucket()
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    uri, _ = ArtifactStore(f"s3://{bucket}/{S3_PREFIX}").write_bytes("model.json", b"{}")
    assert s3_env.keys(bucket) == [f"{S3_PREFIX}/model.json"]
    assert uri == f"s3://{bucket}/{S3_PREFIX}/model.json"


def test_s3_url_without_a_bucket_is_a_configuration_error(s3_env):
    with pytest.raises(ConfigurationError, match="must name a bucket"):
        ArtifactStore("s3://")
