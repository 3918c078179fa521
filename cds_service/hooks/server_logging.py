"""Service logs: one JSON object per line on stderr (events are JSON already)."""

from __future__ import annotations

import logging
import sys


def configure_logging() -> None:
    """Give the cds_service loggers a stderr handler unless the host application
    (or an earlier call) already configured one."""
    logger = logging.getLogger("cds_service")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
