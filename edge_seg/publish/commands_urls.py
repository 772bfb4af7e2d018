"""Which download URLs an ``update_model`` command may name: ``ota.allowed_url_prefixes``, http(s) only.

A URL is allowed when its scheme, host and port equal a prefix's and its path is under the prefix's
path: ``https://models.example/fleet/`` allows ``https://models.example/fleet/b.tar`` but neither
``https://models.example.evil.org/fleet/…`` nor ``https://models.example/fleetx/…``; a prefix without a
trailing slash (``https://cdn.example/m``) allows ``/m`` itself and ``/m/…``. URLs with credentials,
control characters, backslashes or ``.``/``..`` path segments (also percent-encoded) are refused, and
so is every URL when the list is empty (the default). The CLI ``edge-seg model update --url`` is a local
operator action and does not go through this check.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

SCHEMES = {"http": 80, "https": 443}
SETTING = "ota.allowed_url_prefixes"


class UrlRefused(ValueError):
    """An update URL a command may not name (the message is one line)."""


def _parts(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL; ValueError saying what is wrong."""
    if not url or any(ord(c) < 0x21 or ord(c) == 0x7F or c == "\\" for c in url):
        raise ValueError("empty, or has spaces, control characters or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"only http:// and https:// URLs, got {f'{scheme}://' if scheme else 'no scheme'}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("bad port") from None
    if "@" in parts.netloc:
        raise ValueError("no user or password in the URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("no host")
    path = parts.path or "/"
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise ValueError("'.' or '..' path segments")
    return scheme, host, port or SCHEMES[scheme], path


def prefix_problem(prefix: str) -> str | None:
    """What is wrong with a configured prefix (None: it is a usable http(s) URL prefix)."""
    try:
        _parts(prefix)
    except ValueError as err:
        return str(err)
    parts = urlsplit(prefix)
    return "a prefix takes no query or fragment" if parts.query or parts.fragment else None


def _under(path: str, prefix_path: str) -> bool:
    if prefix_path.endswith("/"):
        return path.startswith(prefix_path)
    return path == prefix_path or path.startswith(prefix_path + "/")


def check_update_url(url: str, prefixes: Sequence[str]) -> None:
    """Raise ``UrlRefused`` unless ``url`` is an http(s) URL under one of ``prefixes``."""
    shown = repr(url if len(url) <= 100 else url[:97] + "...")
    try:
        scheme, host, port, path = _parts(url)
    except ValueError as err:
        raise UrlRefused(f"update_model: url refused ({err}), got {shown}") from None
    if not prefixes:
        raise UrlRefused(f"update_model: URLs sent over MQTT are refused: {SETTING} is empty (list the URL "
                         "prefixes this device may download from)")
    for prefix in prefixes:
        try:
            p_scheme, p_host, p_port, p_path = _parts(prefix)
        except ValueError:
            continue  # the config validates prefixes; a bad one allows nothing
        if (p_scheme, p_host, p_port) == (scheme, host, port) and _under(path, p_path):
            return
    raise UrlRefused(f"update_model: url is not under any of the {len(prefixes)} {SETTING}, got {shown}")


__all__ = ["SETTING", "UrlRefused", "check_update_url", "prefix_problem"]
