"""The error types slimkit raises. Each message names what was wrong, where, and what to do about it."""

from __future__ import annotations


class SlimkitError(Exception):
    """Base class of every error slimkit raises on bad input; the CLI prints its message and exits with code 2."""


class ConfigError(SlimkitError, ValueError):
    """A configuration value is out of range or inconsistent (e.g. a prune ratio of 1.5)."""


class UnsupportedModelError(ConfigError):
    """A runtime cannot run a model (e.g. an op it does not implement); another runtime may."""


class DataError(SlimkitError):
    """A dataset is missing, empty or malformed (e.g. the MNIST package is not installed)."""


class ModelSpecError(SlimkitError):
    """A model spec names no registered model, or a ``file.py:factory`` that cannot be loaded."""


class CheckpointError(SlimkitError):
    """A checkpoint file is missing, unreadable or does not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs arbitrary pickled code to load; slimkit refuses to run it."""


class TraceError(SlimkitError):
    """A model cannot be traced into a graph (data-dependent control flow, unsupported op)."""
