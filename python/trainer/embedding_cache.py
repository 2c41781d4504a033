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
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.artifacts import ArtifactStore, sha256_hex
from trainer.embeddings import EmbeddingModelId
from trainer.errors import ArtifactError

EMBEDDINGS_PREFIX = "embeddings"
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
    hits: int  # texts found in the cache
    embedded: int  # distinct texts embedded by this call


class EmbeddingCache:
    def __init__(self, store: ArtifactStore, encoder: EmbeddingModelId, backend: str = "torch"):
        self.store = store
        self.encoder = encoder
        self.prefix = f"{EMBEDDINGS_PREFIX}/{encoder_key(encoder, backend)}"
        self._schema = pa.schema(
            [("text_sha256", pa.binary(32)), ("vector", pa.list_(pa.float32(), encoder.dimension))]
        )

    def lookup(self, digests: list[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors of those digests that have one."""
        wanted = pa.array(sorted(set(digests)), type=pa.binary(32))
        found: dict[bytes, np.ndarray] = {}
        if len(wanted) == 0:
            return found
        for stored in self.store.list_files(self.prefix):
            name = stored.relative_path.rsplit("/", 1)[-1]
            if name.startswith(".") or not name.endswith(".parquet"):
                continue  # a write in progress, or a killed one
            shard = self._read_shard(stored.uri)
            if shard is None:
                continue
            keep = pc.is_in(shard.column("text_sha256"), value_set=wanted)
            matched = shard.filter(keep)
            if matched.num_rows == 0:
                continue
            vectors = _vectors(matched, self.encoder.dimension)
            for digest, vector in zip(matched.column("text_sha256").to_pylist(), vectors):
                found.setdefault(digest, vector)
        return found

    def add(self, digests: list[bytes], vectors: np.ndarray) -> str | None:
        """Store new vectors as one shard; return its URI (None when there was nothing to add)."""
        if not digests:
            return None
        order = sorted(range(len(digests)), key=lambda i: digests[i])
        flat = np.ascontiguousarray(vectors[order], dtype=np.float32).reshape(-1)
        table = pa.table(
            {
                "text_sha256": pa.array([digests[i] for i in order], type=pa.binary(32)),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), self.encoder.dimension),
            },
            schema=self._schema,
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", compression_level=1)
        data = buffer.getvalue()
        relative = f"{self.prefix}/{sha256_hex(data)}.parquet"
        if self.store.exists(relative):
            return self.store.uri(relative)
        uri, _ = self.store.write_bytes(relative, data)
        return uri

    def _read_shard(self, uri: str) -> pa.Table | None:
        try:
            with self.store.open_read(uri) as handle:
                table = pq.read_table(handle)
            if table.schema.field("vector").type != self._schema.field("vector").type:
                raise ValueError(f"vectors of type {table.schema.field('vector').type}")
            return table.select(["text_sha256", "vector"])
        except (ArtifactError, OSError, ValueError, KeyError, pa.ArrowException) as exc:
            log.warning("embedding cache: skipping unreadable shard %s: %s", uri, exc)
            return None


def embed_with_cache(
    texts: list[str], cache: EmbeddingCache | None, embed: Callable[[list[str]], np.ndarray]
) -> CachedEmbeddings:
    """Vectors for ``texts`` (in order): from the cache where it has them, from
    ``embed`` (called once, on the distinct texts it lacks) otherwise; new vectors
    are added to the cache."""
    digests = text_digests(texts)
    found = cache.lookup(digests) if cache is not None else {}
    missing: dict[bytes, str] = {}
    for digest, text in zip(digests, texts):
        if digest not in found and digest not in missing:
            missing[digest] = text
    if missing:
        fresh = embed(list(missing.values()))
        new = dict(zip(missing.keys(), fresh))
        if cache is not None:
            cache.add(list(new.keys()), np.stack(list(new.values())))
        found = {**found, **new}
    dimension = next(iter(found.values())).shape[0] if found else 0
    vectors = np.empty((len(texts), dimension), dtype=np.float32)
    for row, digest in enumerate(digests):
        vectors[row] = found[digest]
    hits = sum(1 for digest in set(digests) if digest not in missing)
    return CachedEmbeddings(vectors, hits, len(missing))


def _vectors(table: pa.Table, dimension: int) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dimension)
