"""Yushan: a sandboxed data-computation platform (data clean room) on Spark."""

__version__ = "0.1.0"
