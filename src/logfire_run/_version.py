"""The version of logfire-run, importable from anywhere in the package without importing its API."""

__version__ = "0.1.0"
