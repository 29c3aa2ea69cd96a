"""Where bashgpt keeps its caches: $BASHGPT_CACHE, else ~/.cache/bashgpt."""

import os
from pathlib import Path


def cache_root() -> Path:
    """Debian downloads and unpacked packages live here; tokenised datasets under packed/."""
    return Path(os.environ.get("BASHGPT_CACHE", Path.home() / ".cache" / "bashgpt"))


def packed_cache_dir() -> Path:
    return cache_root() / "packed"
