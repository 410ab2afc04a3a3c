"""Matrix side: appservice HTTP API, ghosts, portals, bot, permissions."""

from bridge.matrix.connector import MatrixSide
from bridge.matrix.handler import CallEvent, CallHandler

__all__ = ["CallEvent", "CallHandler", "MatrixSide"]
