"""Backends turn a batch of rendered requests into responses. Heavy imports stay inside each backend."""

from egoqa.backends.base import Backend, Frames, Request, Result, load_backend

__all__ = ["Backend", "Frames", "Request", "Result", "load_backend"]
