"""Who may watch the preview: the optional bearer token, loopback detection, and keeping the token out of logs."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from pathlib import Path
from urllib.parse import parse_qs

from edge_seg.errors import EdgeSegError

__all__ = ["TokenGate", "is_address", "is_loopback", "read_token_file", "redact", "token_problem"]

_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s]*")
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_address(host: str) -> bool:
    """True for an IP address or "" (every address), False for a name (or a mistake) only a bind can resolve."""
    if not host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a bearer token, or None."""
    if len(token) < MIN_TOKEN:
        return (f"at least {MIN_TOKEN} characters are needed (e.g. the output of `openssl rand -hex 16`), "
                f"got {len(token)}")  # the message never repeats the token
    if not re.fullmatch(r"[\x21-\x7e]+", token):
        return "only printable ASCII without spaces can travel in an Authorization header, got other characters"
    return None


def read_token_file(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace ignored); one-line EdgeSegError when it cannot be used."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise EdgeSegError(f"preview.token_file: cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    problem = token_problem(token)
    if problem is not None:
        raise EdgeSegError(f"preview.token_file: the token in {path} is not usable: {problem}")
    return token


def redact(text: str) -> str:
    """``text`` (a request line) with any ``token=`` query value replaced by ``***``."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


class TokenGate:
    """Checks a request's bearer token (header, or ``?token=`` where ``query_ok``) in constant time."""

    def __init__(self, token: str | None) -> None:
        if token is not None:
            problem = token_problem(token)
            if problem is not None:
                raise EdgeSegError(f"preview.token is not usable: {problem}")
        self._digest = None if token is None else hashlib.sha256(token.encode()).digest()

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def allows(self, authorization: str | None, query: str, query_ok: bool) -> bool:
        """True when no token is set, or the request carries it."""
        if self._digest is None:
            return True
        given: str | None = None
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                given = value.strip()
        if given is None and query_ok:
            values = parse_qs(query).get("token")
            given = values[0] if values else None
        if given is None:
            return False
        # equal-length digests: the comparison time tells nothing about the token, not even its length
        return hmac.compare_digest(hashlib.sha256(given.encode(errors="replace")).digest(), self._digest)
