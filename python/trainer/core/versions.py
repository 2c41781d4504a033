"""Versions of what a run depended on, stored in its params."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = {
    "torch": "torch",
    "sentence_transformers": "sentence-transformers",
    "transformers": "transformers",
    # What runs the encoder for --embedding-backend onnx, onnx-int8, openvino.
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "scikit_learn": "scikit-learn",
    "skops": "skops",
    "numpy": "numpy",
    "pyarrow": "pyarrow",
    "dbt_core": "dbt-core",
    "training_db_pipeline": "training-db-pipeline",
}


def library_versions(database_engine: str) -> dict[str, str]:
    versions = {"python": platform.python_version(), "database_engine": database_engine}
    for key, distribution in PACKAGES.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[key] = "not installed"
    return versions
