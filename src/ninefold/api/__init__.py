"""The REST API (docs/api.md), /metrics and the dashboard, served by every agent."""

from ninefold.api.app import create_app
from ninefold.api.server import ApiServer

__all__ = ["ApiServer", "create_app"]
