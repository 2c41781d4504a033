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
reads shards a row group (``SHARD_ROW_GROUP``) at a time straight into its matrix.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.artifacts import ArtifactStore, sha256_hex
from trainer.embeddings import EmbeddingModelId
from trainer.errors import ArtifactError

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

    def fill(self, wanted: pa.Array, destination: np.ndarray, rows: np.ndarray, found: np.ndarray) -> None:
        """Copy the cached vector of each ``wanted[i]`` (distinct digests) into
        ``destination[rows[i]]`` and set ``found[i]``.

        Shards are read ``SHARD_ROW_GROUP`` rows at a time, so memory stays at one
        row group whatever the size of the cache; a shard that turns out unreadable
        midway keeps what was read from it before the damage.
        """
        if len(wanted) == 0:
            return
        for stored in self.store.list_files(self.prefix):
            name = stored.relative_path.rsplit("/", 1)[-1]
            if name.startswith(".") or not name.endswith(".parquet"):
                continue  # a write in progress, or a killed one
            try:
                for batch in self._shard_batches(stored.uri):
                    positions = pc.fill_null(pc.index_in(batch.column(0), value_set=wanted), -1)
                    positions = positions.to_numpy(zero_copy_only=False)
                    matched = positions >= 0
                    if not matched.any():
                        continue
                    vectors = batch.column(1).flatten().to_numpy(zero_copy_only=False)
                    vectors = vectors.reshape(-1, self.encoder.dimension)
                    destination[rows[positions[matched]]] = vectors[matched]
                    found[positions[matched]] = True
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

    def _shard_batches(self, uri: str) -> Iterator[pa.RecordBatch]:
        with self.store.open_read(uri) as handle:
            shard = pq.ParquetFile(handle)
            vector_type = shard.schema_arrow.field("vector").type
            if vector_type != self._schema.field("vector").type:
                raise ValueError(f"vectors of type {vector_type}")
            yield from shard.iter_batches(batch_size=SHARD_ROW_GROUP, columns=["text_sha256", "vector"])


def embed_with_cache(
    texts: list[str],
    cache: EmbeddingCache | None,
    embed: Callable[[list[str]], np.ndarray],
    progress: bool | None = None,
    chunk_texts: int = EMBED_CHUNK_TEXTS,
) -> CachedEmbeddings:
    """Vectors for ``texts`` (one float32 row per text, in order; equal texts get
    the same vector): from the cache where it has them, from ``embed`` otherwise.

    The texts the cache lacks are embedded once each, longest first, ``chunk_texts``
    at a time, and each chunk is added to the cache as its own shard as soon as it
    is done: besides the result, memory holds one chunk, and an interrupted run
    keeps the chunks it finished. ``progress`` shows one bar over all of them.
    """
    from tqdm.auto import tqdm

    digests = text_digests(texts)
    slot_of: dict[bytes, int] = {}  # distinct digest -> its slot, in order of first appearance
    text_slot = np.fromiter((slot_of.setdefault(d, len(slot_of)) for d in digests), dtype=np.int64, count=len(texts))
    del digests
    _, first_row = np.unique(text_slot, return_index=True)  # the first row of each slot
    found = np.zeros(len(slot_of), dtype=bool)
    vectors = np.empty((len(texts), cache.encoder.dimension if cache is not None else 0), dtype=np.float32)
    if cache is not None:
        cache.fill(pa.array(list(slot_of), type=pa.binary(32)), vectors, first_row, found)

    missing = np.flatnonzero(~found)
    missing = missing[np.argsort([-len(texts[first_row[slot]]) for slot in missing], kind="stable")]
    slot_digests = list(slot_of) if len(missing) else []
    # disable=None: a bar only on a terminal.
    disable = True if not len(missing) else (None if progress is None else not progress)
    with tqdm(total=len(missing), desc="Embedding", unit="segment", disable=disable) as bar:
        for start in range(0, len(missing), chunk_texts):
            chunk = missing[start : start + chunk_texts]
            fresh = np.asarray(embed([texts[row] for row in first_row[chunk]]), dtype=np.float32)
            if vectors.shape[1] != fresh.shape[1]:  # no cache told the dimension
                vectors = np.empty((len(texts), fresh.shape[1]), dtype=np.float32)
            vectors[first_row[chunk]] = fresh
            if cache is not None:
                cache.add([slot_digests[slot] for slot in chunk], fresh)
            bar.update(len(chunk))
    repeated = np.flatnonzero(first_row[text_slot] != np.arange(len(texts)))
    vectors[repeated] = vectors[first_row[text_slot[repeated]]]
    return CachedEmbeddings(vectors, int(found.sum()), len(missing))
