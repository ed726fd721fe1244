"""Secrets (API keys, tokens, passwords in URLs such as a sweep's storage URL) never reach configs,
logs or ``results.json``: ``redact`` masks them in any nested config before it is written.

Two rules: a value under a key that names a secret (``password``, ``api_key``, ``wandb_key``,
``token``, ...) is masked whole; in every string, the password of a URL
(``postgresql://user:PASSWORD@host/db``) and secret query or ``KEY=value`` parameters are masked.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Key endings after '_' or '.' (or the whole key); 'tokenizer' and 'pad_token' are not secrets.
_SECRET_KEY = re.compile(
    r"(^|[_.])(password|passwd|pwd|secret|api_?key|access_key|private_key|credentials?"
    r"|(auth|access|api|hf|wandb|github)_token|wandb_key)$|^token$",
    re.IGNORECASE,
)
# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^@/\s]+)(?P<at>@)")
# ?password=...&token=... in URLs, and PASSWORD=... / api_key: ... in free text
_PARAM = re.compile(
    r"(?P<head>\b[\w.\-]*(?:password|passwd|pwd|secret|api_?key|access_key|token)\s*[=:]\s*)(?P<secret>[^\s&;,'\"]+)",
    re.IGNORECASE,
)


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key.strip().lower().replace("-", "_")))


def redact_text(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], text)
    return _PARAM.sub(lambda m: m["head"] + MASK, text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings, scalars) with secrets masked."""
    if isinstance(value, dict):
        return {
            k: MASK
            if is_secret_key(k) and v not in (None, "", False) and not isinstance(v, dict | list)
            else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value
