"""Serving: the HTTP API and the web page (``cardiomegaly serve MODEL``)."""

from .app import create_app, model_card

__all__ = ["create_app", "model_card"]
