"""Entrypoints: they validate and convert, then call a use case."""
