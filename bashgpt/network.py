"""Whether a server can be reached, asked quickly before any work depends on it (the Hub, a tracker)."""

import socket
from urllib.parse import urlparse

TIMEOUT = 3.0  # seconds a check may take


def reachable(host: str | None, port: int | None = None, timeout: float = TIMEOUT) -> bool:
    """Whether a TCP connection to ``host`` (port 443 unless given) opens within ``timeout`` seconds."""
    if not host:
        return False
    try:
        with socket.create_connection((host, port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = TIMEOUT) -> bool:
    """Whether the Hugging Face Hub is online here (not HF_HUB_OFFLINE) and answers within ``timeout`` seconds."""
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE and reachable(urlparse(constants.ENDPOINT).hostname, timeout=timeout)
