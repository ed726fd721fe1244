"""Is the Hugging Face hub (or the W&B server) within reach? Asked before any library would
stall 20-50 s on a machine without network, so that the user gets one line in about a second.

The hosts are the ones the libraries themselves use: ``HF_ENDPOINT`` (a mirror or a private hub)
and, when ``HTTPS_PROXY`` is set, the proxy, which is what a connection would really go through.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from apm_lightning.core.errors import APMError

DEFAULT_HUB = "https://huggingface.co"


def hub_offline_requested() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def endpoint_address(url: str) -> tuple[str, int]:
    """(host, port) of a URL such as ``https://hub.example.org:8443``."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    return parsed.hostname or "", parsed.port or (80 if parsed.scheme == "http" else 443)


def connection_address(url: str) -> tuple[str, int]:
    """Where a connection to ``url`` goes first: the HTTPS (or HTTP) proxy when one is set and
    ``NO_PROXY`` does not exempt the host, else the host itself."""
    host, port = endpoint_address(url)
    scheme = urlparse(url if "://" in url else f"https://{url}").scheme
    no_proxy = [
        h.strip().lstrip(".") for h in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",")
    ]
    if any(h and (host == h or host.endswith("." + h)) for h in no_proxy) or "*" in no_proxy:
        return host, port
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    proxy = next((os.environ[n] for n in names if os.environ.get(n)), None)
    return endpoint_address(proxy) if proxy else (host, port)


def hub_endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT`` when set (as huggingface_hub reads it)."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_HUB


def tcp_reachable(host: str, port: int = 443, timeout: float = 1.5) -> bool:
    """True when ``host:port`` accepts a TCP connection within ``timeout`` seconds.

    DNS resolution can hang far longer than a socket timeout, so the whole check runs in a
    daemon thread that we stop waiting for.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def url_reachable(url: str, timeout: float = 1.5) -> bool:
    """True when a connection towards ``url`` (through its proxy, if any) opens in time."""
    return tcp_reachable(*connection_address(url), timeout)


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when the Hugging Face hub answers (and offline mode is not set)."""
    return not hub_offline_requested() and url_reachable(hub_endpoint(), timeout)


def hub_unreachable_error(what: str, hint: str) -> APMError:
    reason = (
        "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
        if hub_offline_requested()
        else f"{endpoint_address(hub_endpoint())[0]} is not reachable"
    )
    return APMError(f"{what}: no local copy found and {reason}; {hint}")


def in_hub_cache(name: str) -> bool:
    """True when the hub's model ``name`` is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False
