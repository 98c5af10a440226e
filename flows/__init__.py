"""Prefect flows. Importing any of them first applies the project's offline Prefect defaults."""

from flows import settings as _settings  # noqa: F401  (must run before prefect is imported)
