"""Fixtures for tests/matrix (defined in matrix_env.py so test modules can import the helpers)."""

from tests.matrix.matrix_env import env

__all__ = ["env"]
