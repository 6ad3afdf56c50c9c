"""Isolated Spark execution: the session factory, hardening, encryption, executors."""
