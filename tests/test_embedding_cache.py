"""The embedding cache: a real encoder, a real blob store, real training runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest
from conftest import prepared_workspace

from trainer.core.blob_store import ArtifactStore
from trainer.model.encoder.cache import EmbeddingCache, EmbeddingJob, embed_with_cache, text_digests
from trainer.model.encoder.embeddings import EmbeddingModelId, embed_texts, embedding_model_id
from trainer.model.encoder.process import EncoderProcess

TEXTS = ["Date:", "TO: R. J. Reynolds", "Date:", "Total amount", "«Größe» 👩‍🔬", "line\nbreak", "TO: R. J. Reynolds"]


class RecordingEncoder:
    """The real encoder, remembering which texts it was asked to embed."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return embed_texts(texts, progress=False)


def test_a_second_pass_embeds_nothing_and_returns_the_same_vectors(tmp_path):
    cache = EmbeddingCache(ArtifactStore(str(tmp_path)), embedding_model_id())
    encoder = RecordingEncoder()
    cold = embed_with_cache(TEXTS, cache, encoder)
    assert len(encoder.calls) == 1 and sorted(encoder.calls[0]) == sorted(set(TEXTS))  # each distinct text once
    assert (cold.hits, cold.embedded) == (0, 5)
    np.testing.assert_allclose(cold.vectors, embed_texts(TEXTS, progress=False), atol=1e-5)
    assert np.array_equal(cold.vectors[0], cold.vectors[2])

    warm = embed_with_cache(TEXTS, cache, encoder)
    assert len(encoder.calls) == 1 and (warm.hits, warm.embedded) == (5, 0)
    assert np.array_equal(warm.vectors, cold.vectors)

    more = embed_with_cache(TEXTS + ["a text never seen"], cache, encoder)
    assert encoder.calls[-1] == ["a text never seen"] and (more.hits, more.embedded) == (5, 1)
    assert np.array_equal(more.vectors[:-1], cold.vectors)


def test_the_matrix_is_built_after_the_encoder_process_is_gone(tmp_path):
    cache = EmbeddingCache(ArtifactStore(str(tmp_path)), embedding_model_id())
    embed_with_cache(TEXTS[:2], cache, RecordingEncoder())  # two of the five distinct texts cached
    texts = TEXTS + ["a text never seen"]
    with EmbeddingJob(texts, cache, chunk_texts=2) as job:
        assert len(job.missing) == 4
        with EncoderProcess(batch_size=8) as encoder:
            job.embed_missing(encoder.embed, progress=False)
            child = encoder.pid
        assert child is not None and not psutil.pid_exists(child)  # ended before the matrix exists
        spooled = [path for _, path in job._spooled]
        assert len(spooled) == 2 and all(path.exists() for path in spooled)
        embedded = job.result()
    assert not any(path.exists() for path in spooled)  # the spool goes with the job
    assert (embedded.hits, embedded.embedded) == (2, 4)
    np.testing.assert_allclose(embedded.vectors, embed_texts(texts, progress=False), atol=1e-5)
    assert np.array_equal(embedded.vectors[1], embedded.vectors[6])  # the same text, the same row


def test_a_job_without_a_cache_embeds_each_distinct_text_once():
    encoder = RecordingEncoder()
    with EmbeddingJob(TEXTS, None, chunk_texts=3) as job:
        with pytest.raises(RuntimeError, match="5 texts are not embedded yet"):
            job.result()
        job.embed_missing(encoder, progress=False)
        embedded = job.result()
    assert sorted(text for call in encoder.calls for text in call) == sorted(set(TEXTS))
    assert [len(call) for call in encoder.calls] == [3, 2]
    assert (embedded.hits, embedded.embedded) == (0, 5)
    np.testing.assert_allclose(embedded.vectors, embed_texts(TEXTS, progress=False), atol=1e-5)


def test_an_encoder_that_returns_the_wrong_shape_is_an_error():
    with EmbeddingJob(TEXTS, None) as job, pytest.raises(ValueError, match=r"returned \(4, 3\) vectors for 5 texts"):
        job.embed_missing(lambda texts: np.zeros((4, 3), dtype=np.float32), progress=False)


def test_texts_are_embedded_and_stored_a_chunk_at_a_time_and_a_crash_keeps_finished_chunks(tmp_path):
    store = ArtifactStore(str(tmp_path))
    cache = EmbeddingCache(store, embedding_model_id())
    texts = [f"segment number {i} " + "x" * (i % 7) for i in range(9)]
    calls: list[list[str]] = []

    def failing_on_third_chunk(chunk: list[str]) -> np.ndarray:
        calls.append(chunk)
        if len(calls) == 3:
            raise RuntimeError("encoder died")
        return embed_texts(chunk, progress=False)

    with pytest.raises(RuntimeError, match="encoder died"):
        embed_with_cache(texts, cache, failing_on_third_chunk, chunk_texts=4)
    assert [len(chunk) for chunk in calls] == [4, 4, 1]
    assert [len(c[0]) for c in calls[:2]] == sorted((len(t) for t in texts), reverse=True)[::4][:2]  # longest first
    assert len(list((tmp_path / "embeddings").rglob("*.parquet"))) == 2  # one shard per finished chunk

    encoder = RecordingEncoder()
    resumed = embed_with_cache(texts, cache, encoder, chunk_texts=4)
    assert encoder.calls == [calls[2]] and (resumed.hits, resumed.embedded) == (8, 1)
    np.testing.assert_allclose(resumed.vectors, embed_texts(texts, progress=False), atol=1e-5)


def test_large_shards_are_read_a_row_group_at_a_time_whatever_wrote_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.model.encoder.cache import SHARD_ROW_GROUP

    store = ArtifactStore(str(tmp_path))
    encoder = embedding_model_id()
    cache = EmbeddingCache(store, encoder)
    rows = 2 * SHARD_ROW_GROUP + 5
    digests = [i.to_bytes(32, "big") for i in range(rows)]
    vectors = np.random.default_rng(0).random((rows, encoder.dimension), dtype=np.float32)
    cache.add(digests[: rows // 2], vectors[: rows // 2])
    shard = next((tmp_path / "embeddings").rglob("*.parquet"))
    assert pq.ParquetFile(shard).metadata.num_row_groups > 1
    # A shard as the first version wrote them: one row group, rows unsorted.
    table = pa.table(
        {
            "text_sha256": pa.array(digests[rows // 2 :][::-1], type=pa.binary(32)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows // 2 :][::-1].reshape(-1)), encoder.dimension),
        }
    )
    pq.write_table(table, tmp_path / cache.prefix / ("0" * 64 + ".parquet"))

    wanted = digests[::3] + [b"\xff" * 32]
    found = cache.lookup(wanted)
    assert set(found) == set(digests[::3])
    for i in range(0, rows, 3):
        assert np.array_equal(found[digests[i]], vectors[i])


def test_another_encoder_never_gets_these_vectors(tmp_path):
    store = ArtifactStore(str(tmp_path))
    real = embedding_model_id()
    embed_with_cache(TEXTS, EmbeddingCache(store, real), RecordingEncoder())
    retrained = EmbeddingModelId(real.name, "0" * 64, real.dimension)  # same name, other weights
    assert EmbeddingCache(store, retrained).lookup(text_digests(TEXTS)) == {}
    assert EmbeddingCache(store, real, backend="onnx").lookup(text_digests(TEXTS)) == {}
    assert len(EmbeddingCache(store, real).lookup(text_digests(TEXTS))) == 5


def test_unreadable_and_partial_shards_are_skipped(tmp_path):
    store = ArtifactStore(str(tmp_path))
    cache = EmbeddingCache(store, embedding_model_id())
    embed_with_cache(TEXTS[:2], cache, RecordingEncoder())
    store.write_bytes(f"{cache.prefix}/{'f' * 64}.parquet", b"PAR1 not really")
    store.write_bytes(f"{cache.prefix}/.{'e' * 64}.parquet.partial-123", b"half")
    found = cache.lookup(text_digests(TEXTS))
    assert set(found) == set(text_digests(TEXTS[:2]))


def test_two_processes_filling_the_cache_at_once_agree(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        from trainer.core.blob_store import ArtifactStore
        from trainer.model.encoder.cache import EmbeddingCache, embed_with_cache
        from trainer.model.encoder.embeddings import embed_texts, embedding_model_id
        texts = json.loads(sys.argv[1])
        cache = EmbeddingCache(ArtifactStore({str(tmp_path)!r}), embedding_model_id())
        result = embed_with_cache(texts, cache, lambda t: embed_texts(t, progress=False))
        print(json.dumps(result.vectors.round(6).tolist()))
        """
    )
    first = TEXTS + [f"only in the first {i}" for i in range(40)]
    second = TEXTS + [f"only in the second {i}" for i in range(40)]
    processes = [
        subprocess.Popen([sys.executable, "-c", script, json.dumps(texts)], stdout=subprocess.PIPE, text=True)
        for texts in (first, second)
    ]
    outputs = [np.array(json.loads(process.communicate(timeout=300)[0])) for process in processes]
    assert all(process.returncode == 0 for process in processes)
    np.testing.assert_allclose(outputs[0][: len(TEXTS)], outputs[1][: len(TEXTS)], atol=1e-5)
    cache = EmbeddingCache(ArtifactStore(str(tmp_path)), embedding_model_id())
    found = cache.lookup(text_digests(first + second))
    assert len(found) == len(set(first + second))
    again = embed_with_cache(first + second, cache, RecordingEncoder())
    assert again.embedded == 0
    np.testing.assert_allclose(again.vectors[: len(first)], outputs[0], atol=1e-5)


@pytest.mark.slow
def test_a_retrain_embeds_only_the_new_texts(duckdb_workspace):
    from trainer.model.arguments import TrainingArguments
    from trainer.results.store import ResultsStore
    from trainer.runs.training import train

    space = prepared_workspace(duckdb_workspace, 10)
    settings = space.settings()
    # The cache is under test: the embedding text model alone, no other family, no label-issue fits.
    embedding_only = dict(
        model_name="cached", seed=1, char_ngram_features=False, layout_features=False, neighbour_features=False,
        label_issues=False,
    )  # fmt: skip
    first = train(TrainingArguments(**embedding_only), settings, progress=False)
    second = train(TrainingArguments(**embedding_only), settings, progress=False)
    uncached = train(TrainingArguments(**embedding_only, embedding_cache=False), settings, progress=False)
    store = ResultsStore(space.database())
    distinct = len(set(space.query("select text from datasets.training_examples")))
    params = [store.get_run(result.run_id).params for result in (first, second, uncached)]
    stats = [(p["embedding_cache_hits"], p["embedded_texts"], p["embedding_cache"]) for p in params]
    assert stats == [(0, distinct, True), (distinct, 0, True), (0, distinct, False)]
    metrics = [{(m.split, m.name, m.label): m.value for m in store.run_metrics(r.run_id)} for r in (first, second)]
    assert metrics[0] == metrics[1]  # the very same vectors
    assert len(list((space.artifacts / "embeddings").rglob("*.parquet"))) == 1

    # One new accepted annotation with a text no run has seen.
    space.execute_script(
        "insert into app.annotations select 'new-segment', document_id, page, x0, y0, x1, y1, "
        "'A text no run has embedded', label, status, created_at, updated_at from app.annotations limit 1; "
        "insert into app.annotation_events select 999999, 'new-segment', 'accepted', label, 'reviewer', "
        "occurred_at, null from app.annotation_events where event_type = 'accepted' limit 1"
    )
    space.dbt("run")
    third = train(TrainingArguments(**embedding_only), settings, progress=False)
    third_params = store.get_run(third.run_id).params
    assert (third_params["embedding_cache_hits"], third_params["embedded_texts"]) == (distinct, 1)
    # A queued run rebuilds its arguments from these params.
    from trainer.model.arguments import TrainingArguments as Arguments

    assert Arguments.from_dict(third_params) == TrainingArguments(**embedding_only)
