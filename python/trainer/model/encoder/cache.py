"""A cache of sentence embeddings in the blob store: a retrain embeds only the
texts no earlier run has embedded with the same encoder.

    embeddings/<encoder key>/<sha256 of the shard>.parquet
        text_sha256  fixed_size_binary(32)   sha256 of the text's UTF-8 bytes
        vector       fixed_size_list<float32>[dimension]

The encoder key is derived from the encoder's weights (their sha256), its output
dimension and how vectors are made (normalised, the backend), so vectors of any
other encoder are never returned: a new model starts with an empty cache.

Shards are immutable and written atomically under content-addressed names: two
trainers at once may each write a shard (a vector they both computed is stored
twice, harmlessly), and nobody ever reads a torn file. A shard that cannot be read
is skipped, and its texts are embedded again.

Memory stays bounded at any scale: a run embeds the texts the cache lacks a chunk
(``EMBED_CHUNK_TEXTS``) at a time and stores each chunk as a shard right away, and
reads shards a row group (``SHARD_ROW_GROUP``) at a time straight into its matrix,
which it builds only once the encoder is done (:class:`EmbeddingJob`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.core.blob_store import ArtifactStore, sha256_hex
from trainer.core.errors import ArtifactError
from trainer.core.scratch import scratch_directory
from trainer.model.encoder.embeddings import EmbeddingModelId

EMBEDDINGS_PREFIX = "embeddings"
# Texts embedded (and stored as one shard) at a time: bounds the memory of a cold
# run at about this many vectors besides its result.
EMBED_CHUNK_TEXTS = 32_768
# Rows per row group of a shard, and per read: bounds the memory of a lookup.
SHARD_ROW_GROUP = 8_192
log = logging.getLogger(__name__)


def text_digests(texts: list[str]) -> list[bytes]:
    return [hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest() for text in texts]


def encoder_key(encoder: EmbeddingModelId, backend: str = "torch", normalized: bool = True) -> str:
    """A directory name for one encoder's vectors."""
    spec = f"{encoder.name}\n{encoder.weights_sha256}\n{encoder.dimension}\n{backend}\nnormalized={normalized}"
    return f"{backend}-{hashlib.sha256(spec.encode()).hexdigest()[:24]}"


@dataclass(frozen=True)
class CachedEmbeddings:
    vectors: np.ndarray  # one row per text asked for, in order
    hits: int  # distinct texts found in the cache
    embedded: int  # distinct texts embedded by this call


class EmbeddingCache:
    def __init__(self, store: ArtifactStore, encoder: EmbeddingModelId, backend: str = "torch"):
        self.store = store
        self.encoder = encoder
        self.prefix = f"{EMBEDDINGS_PREFIX}/{encoder_key(encoder, backend)}"
        self._schema = pa.schema(
            [("text_sha256", pa.binary(32)), ("vector", pa.list_(pa.float32(), encoder.dimension))]
        )

    def find(self, wanted: pa.Array) -> np.ndarray:
        """Which of ``wanted`` (distinct digests) the cache holds, as a bool per digest.

        Reads the digest column alone, so nothing the size of the vectors is held.
        """
        found = np.zeros(len(wanted), dtype=bool)
        for batch in self._readable_batches(columns=["text_sha256"]):
            positions = pc.fill_null(pc.index_in(batch.column(0), value_set=wanted), -1).to_numpy(zero_copy_only=False)
            found[positions[positions >= 0]] = True
        return found

    def fill(self, wanted: pa.Array, destination: np.ndarray, rows: np.ndarray, found: np.ndarray) -> None:
        """Copy the cached vector of each ``wanted[i]`` (distinct digests) into
        ``destination[rows[i]]`` and set ``found[i]``.

        Shards are read ``SHARD_ROW_GROUP`` rows at a time, so memory stays at one
        row group whatever the size of the cache; a shard that turns out unreadable
        midway keeps what was read from it before the damage.
        """
        if len(wanted) == 0:
            return
        for batch in self._readable_batches(columns=["text_sha256", "vector"]):
            positions = pc.fill_null(pc.index_in(batch.column(0), value_set=wanted), -1)
            positions = positions.to_numpy(zero_copy_only=False)
            matched = positions >= 0
            if not matched.any():
                continue
            vectors = batch.column(1).flatten().to_numpy(zero_copy_only=False)
            vectors = vectors.reshape(-1, self.encoder.dimension)
            destination[rows[positions[matched]]] = vectors[matched]
            found[positions[matched]] = True

    def _readable_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Every shard's rows, a row group at a time, skipping what cannot be read."""
        for stored in self.store.list_files(self.prefix):
            name = stored.relative_path.rsplit("/", 1)[-1]
            if name.startswith(".") or not name.endswith(".parquet"):
                continue  # a write in progress, or a killed one
            try:
                yield from self._shard_batches(stored.uri, columns)
            except (ArtifactError, OSError, ValueError, KeyError, pa.ArrowException) as exc:
                log.warning("embedding cache: skipping unreadable shard %s: %s", stored.uri, exc)

    def lookup(self, digests: list[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors of those digests that have one (for small sets; a
        training run fills its matrix with :meth:`fill`)."""
        unique = sorted(set(digests))
        vectors = np.empty((len(unique), self.encoder.dimension), dtype=np.float32)
        found = np.zeros(len(unique), dtype=bool)
        self.fill(pa.array(unique, type=pa.binary(32)), vectors, np.arange(len(unique)), found)
        return {digest: vectors[i] for i, digest in enumerate(unique) if found[i]}

    def add(self, digests: list[bytes], vectors: np.ndarray) -> str | None:
        """Store new vectors as one shard; return its URI (None when there was nothing to add)."""
        if not digests:
            return None
        # Sorted rows: the same vectors always make the same bytes, hence the same name.
        order = sorted(range(len(digests)), key=lambda i: digests[i])
        flat = np.ascontiguousarray(vectors[order], dtype=np.float32).reshape(-1)
        table = pa.table(
            {
                "text_sha256": pa.array([digests[i] for i in order], type=pa.binary(32)),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), self.encoder.dimension),
            },
            schema=self._schema,
        )
        del flat
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", compression_level=1, row_group_size=SHARD_ROW_GROUP)
        del table
        data = buffer.getbuffer()
        relative = f"{self.prefix}/{sha256_hex(data)}.parquet"
        if self.store.exists(relative):
            return self.store.uri(relative)
        uri, _ = self.store.write_bytes(relative, data)
        return uri

    def _shard_batches(self, uri: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
        with self.store.open_read(uri) as handle:
            shard = pq.ParquetFile(handle)
            vector_type = shard.schema_arrow.field("vector").type
            if vector_type != self._schema.field("vector").type:
                raise ValueError(f"vectors of type {vector_type}")
            yield from shard.iter_batches(batch_size=SHARD_ROW_GROUP, columns=columns)


class EmbeddingJob:
    """Vectors for ``texts`` (one float32 row per text, in order; equal texts get
    the same vector): from the cache where it has them, embedded otherwise, in two
    steps so that the encoder and the result are never in memory together.

        with EmbeddingJob(texts, cache) as job:
            with EncoderProcess(...) as encoder:     # or any texts -> vectors callable
                job.embed_missing(encoder.embed)
            embedded = job.result()                  # after the encoder is gone

    :meth:`embed_missing` embeds the texts the cache lacks once each, longest first,
    ``chunk_texts`` at a time; each chunk is added to the cache as its own shard as
    soon as it is done (an interrupted run keeps the chunks it finished) and spooled
    to a local file. Only :meth:`result` builds the matrix, from the cache and the
    spool. At 1M annotations the matrix is about 500 MB, and the encoder process
    about 1 GB (docs/BENCHMARKS.md): held at once, they were the run's peak.
    """

    def __init__(
        self,
        texts: list[str],
        cache: EmbeddingCache | None,
        chunk_texts: int = EMBED_CHUNK_TEXTS,
        spool_directory: Path | None = None,
    ):
        """``spool_directory``: where the chunks are spooled (made if missing, removed
        by :meth:`close`); by default a new scratch directory (trainer.core.scratch)."""
        self._texts = texts
        self._cache = cache
        self._chunk_texts = chunk_texts
        digests = text_digests(texts)
        slot_of: dict[bytes, int] = {}  # distinct digest -> its slot, in order of first appearance
        self._text_slot = np.fromiter(
            (slot_of.setdefault(d, len(slot_of)) for d in digests), dtype=np.int64, count=len(texts)
        )
        del digests
        self._digests = list(slot_of)
        _, self._first_row = np.unique(self._text_slot, return_index=True)  # the first row of each slot
        self._cached = np.zeros(len(self._digests), dtype=bool)
        if cache is not None and self._digests:
            self._cached = cache.find(pa.array(self._digests, type=pa.binary(32)))
        missing = np.flatnonzero(~self._cached)
        lengths = [-len(texts[self._first_row[slot]]) for slot in missing]
        self.missing = missing[np.argsort(lengths, kind="stable")]  # slots to embed, longest text first
        self._spooled: list[tuple[np.ndarray, Path]] = []  # (slots, file of their vectors)
        self._spool_directory = spool_directory
        self._spool: Path | None = None
        self._own_spool = None  # the TemporaryDirectory behind _spool when this job made it
        self._dimension = cache.encoder.dimension if cache is not None else None

    def __enter__(self) -> EmbeddingJob:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._own_spool is not None:
            self._own_spool.cleanup()
        elif self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
        self._spool = self._own_spool = None

    def _spool_path(self, index: int) -> Path:
        if self._spool is None:
            if self._spool_directory is None:
                self._own_spool = scratch_directory("vectors")
                self._spool = Path(self._own_spool.name)
            else:
                self._spool = Path(self._spool_directory)
                self._spool.mkdir(parents=True, exist_ok=True)
        return self._spool / f"{index}.f32"

    def embed_missing(self, embed: Callable[[list[str]], np.ndarray], progress: bool | None = None) -> None:
        """Embed what the cache lacks; ``progress`` shows one bar over all of it."""
        from tqdm.auto import tqdm

        if not len(self.missing):
            return
        # disable=None: a bar only on a terminal.
        with tqdm(total=len(self.missing), desc="Embedding", unit="segment",
                  disable=None if progress is None else not progress) as bar:  # fmt: skip
            for start in range(len(self._spooled) * self._chunk_texts, len(self.missing), self._chunk_texts):
                chunk = self.missing[start : start + self._chunk_texts]
                fresh = np.ascontiguousarray(embed([self._texts[row] for row in self._first_row[chunk]]), dtype=np.float32)
                if self._dimension is None:
                    self._dimension = fresh.shape[1]
                if fresh.shape != (len(chunk), self._dimension):
                    raise ValueError(f"the encoder returned {fresh.shape} vectors for {len(chunk)} texts")
                if self._cache is not None:
                    self._cache.add([self._digests[slot] for slot in chunk], fresh)
                path = self._spool_path(len(self._spooled))
                fresh.tofile(path)
                self._spooled.append((chunk, path))
                bar.update(len(chunk))

    def result(self) -> CachedEmbeddings:
        """The matrix, from the cache and the spooled chunks."""
        embedded = sum(len(slots) for slots, _ in self._spooled)
        if embedded != len(self.missing):
            raise RuntimeError(f"{len(self.missing) - embedded} texts are not embedded yet: call embed_missing first")
        vectors = np.empty((len(self._texts), self._dimension or 0), dtype=np.float32)
        cached = np.flatnonzero(self._cached)
        if len(cached):
            found = np.zeros(len(cached), dtype=bool)
            wanted = pa.array([self._digests[slot] for slot in cached], type=pa.binary(32))
            self._cache.fill(wanted, vectors, self._first_row[cached], found)
            if not found.all():  # a shard removed or damaged since find()
                raise ArtifactError(
                    f"{int((~found).sum())} cached vectors could not be read back from the embedding cache "
                    f"{self._cache.store.uri(self._cache.prefix)} (removed or damaged during this run); run again"
                )
        for slots, path in self._spooled:
            vectors[self._first_row[slots]] = np.fromfile(path, dtype=np.float32).reshape(len(slots), -1)
        rows = np.arange(len(self._texts))
        repeated = np.flatnonzero(self._first_row[self._text_slot] != rows)
        vectors[repeated] = vectors[self._first_row[self._text_slot[repeated]]]
        return CachedEmbeddings(vectors, len(cached), embedded)


def embed_with_cache(
    texts: list[str],
    cache: EmbeddingCache | None,
    embed: Callable[[list[str]], np.ndarray],
    progress: bool | None = None,
    chunk_texts: int = EMBED_CHUNK_TEXTS,
) -> CachedEmbeddings:
    """:class:`EmbeddingJob` in one call, for an encoder that may stay in memory
    while the result is built."""
    with EmbeddingJob(texts, cache, chunk_texts) as job:
        job.embed_missing(embed, progress)
        return job.result()
