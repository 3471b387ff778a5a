"""Logging for the CLI: structured enough for humans, secrets scrubbed."""

from __future__ import annotations

import logging
import os
import sys


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            from seamline.security.redaction import scrub_text
        except ImportError:  # pragma: no cover
            return True
        msg = record.getMessage()
        clean = scrub_text(msg)
        if clean != msg:
            record.msg = clean
            record.args = ()
        return True


def setup_logging() -> None:
    level = os.environ.get("SEAMLINE_LOG_LEVEL", "WARNING").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ScrubFilter())
    root = logging.getLogger("seamline")
    root.handlers[:] = [handler]
    root.setLevel(level)
