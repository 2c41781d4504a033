"""The audit API (FastAPI): `from trainer.api import create_app`."""

from trainer.api.app import create_app

__all__ = ["create_app"]
