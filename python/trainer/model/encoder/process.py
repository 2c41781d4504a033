"""The sentence encoder in a process of its own, for a training run.

torch, sentence-transformers and the loaded encoder take about 550 MB that Python
never gives back once imported: in the training process they would stay resident
under the fit that follows and set the run's peak memory (at a million examples,
2,555 MiB against 1,750 MiB for a run that found every vector in its cache;
docs/BENCHMARKS.md). Embedding in a child process returns all of it to the
operating system as soon as the texts are embedded.

The child is ``python -m trainer.model.encoder.process``, started on the first request
(a run whose vectors are all cached starts none). It never re-imports the caller's
script, as multiprocessing's ``spawn`` would, so ``train()`` works from any script
or notebook. Requests and answers go over a pair of pipes as length-prefixed frames:
texts as JSON, vectors as raw float32, errors as their type and message (no pickle).
The child ignores Ctrl-C and SIGTERM (the parent decides what a stop means, and ends
it), and on Linux the kernel kills it when the parent dies, even by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from trainer.core import errors
from trainer.core.errors import TrainerError

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class EncoderProcessError(TrainerError):
    """The encoder process failed or ended without answering."""


class _Child:
    def __init__(self, options: dict):
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        package_root = str(Path(__file__).resolve().parents[3])  # the folder holding trainer/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trainer.model.encoder.process", str(to_child_read), str(from_child_write),
             json.dumps(options), str(os.getpid())],
            pass_fds=(to_child_read, from_child_write),
            stdin=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
        os.close(to_child_read)
        os.close(from_child_write)
        self.requests = Connection(to_child_write, readable=False)
        self.answers = Connection(from_child_read, writable=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        try:
            self.requests.send_bytes(json.dumps(texts).encode("utf-8"))
            header = json.loads(self.answers.recv_bytes())
            if header["status"] == "error":
                raise _error_of(header["type"], header["message"])
            vectors = np.empty(header["shape"], dtype=np.float32)
            # Straight into the array: no bytes object, no copy of it.
            self.answers.recv_bytes_into(memoryview(vectors).cast("B"))
            return vectors
        except (EOFError, OSError) as exc:
            code = self.process.wait(timeout=10)
            raise EncoderProcessError(
                f"the encoder process ended without an answer (exit code {code}; out of memory?)"
            ) from exc

    def close(self) -> None:
        self.requests.close()  # end of requests: the child exits
        self.answers.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.requests.close()
        self.answers.close()


class EncoderProcess:
    """Runs :func:`trainer.model.encoder.embeddings.embed_texts` (with ``options``: ``batch_size``,
    ``backend``, ``model_path``) in a child process, started by the first
    :meth:`embed` and ended when the ``with`` block exits: asked to finish when the
    block ends normally, killed when it ends by an exception (Ctrl-C included)."""

    def __init__(self, **options):
        self._options = {name: str(value) if isinstance(value, Path) else value for name, value in options.items()}
        self._child: _Child | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id; None before the first :meth:`embed`."""
        return self._child.process.pid if self._child is not None else None

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, as ``embed_texts`` gives them."""
        if self._child is None:
            self._child = _Child(self._options)
        return self._child.embed(texts)

    def __enter__(self) -> EncoderProcess:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if exc_type is None:
            child.close()
        else:
            child.stop()


def _error_of(type_name: str, message: str) -> Exception:
    """The child's error as the parent raises it: the trainer's own types keep their
    type (a ConfigurationError stays a user error); anything else is named."""
    kind = getattr(errors, type_name, None)
    if isinstance(kind, type) and issubclass(kind, TrainerError):
        with contextlib.suppress(Exception):
            return kind(message)
    return EncoderProcessError(f"{type_name}: {message}")


def _serve(requests: Connection, answers: Connection, options: dict) -> None:
    from trainer.model.encoder.embeddings import embed_texts

    while True:
        try:
            texts = json.loads(requests.recv_bytes())
        except EOFError:  # the parent is done
            return
        try:
            vectors = np.ascontiguousarray(embed_texts(texts, progress=False, **options), dtype=np.float32)
        except Exception as exc:  # the parent raises it
            answers.send_bytes(json.dumps({"status": "error", "type": type(exc).__name__, "message": str(exc)}).encode())
            continue
        answers.send_bytes(json.dumps({"status": "ok", "shape": list(vectors.shape)}).encode())
        answers.send_bytes(memoryview(vectors).cast("B"))


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


if __name__ == "__main__":
    # Ctrl-C and SIGTERM reach a whole process group; the parent turns them into a
    # failed run and then ends this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(int(sys.argv[4]))
    with contextlib.suppress(BrokenPipeError):
        _serve(
            Connection(int(sys.argv[1]), writable=False),
            Connection(int(sys.argv[2]), readable=False),
            json.loads(sys.argv[3]),
        )
