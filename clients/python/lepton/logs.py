"""One structured log line per event: `event=NAME key=value ...` (job and partition ids included)."""
from __future__ import annotations

import logging
import os
import sys


def event(logger: logging.Logger, name: str, /, level: int = logging.INFO, **fields) -> None:
    if logger.isEnabledFor(level):
        parts = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        logger.log(level, f"event={name} {parts}".rstrip())


def _quote(value) -> str:
    text = str(value)
    return f'"{text}"' if not text or any(c in text for c in ' ="') else text


def configure(component: str) -> None:
    """Log to stderr at LEPTON_LOG_LEVEL (default INFO), one line per event."""
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("LEPTON_LOG_LEVEL", "INFO").upper(),
                        format=f"%(asctime)s %(levelname)s {component}[%(process)d] %(message)s")
