"""Trusted PySpark job templates."""
