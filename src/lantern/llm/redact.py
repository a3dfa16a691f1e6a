"""Keeping secrets out of everything Lantern writes or prints.

A base URL may carry credentials (``http://user:password@host/v1``) or a token in its query string
(``?api-key=...``), and a server may quote the request's Authorization header back in an error body.
Whatever Lantern stores or shows — run.json, the report, log lines, error messages — goes through
one of these first:

- :func:`public_url`: a URL without its user info, with every query value (and any bare query
  token) replaced by ``[redacted]``;
- :func:`scrub_urls`: every URL inside a text made public (log lines of the HTTP library);
- :class:`Redactor`: a text with the URLs made public *and* the given secrets (the API key, the
  URL's credentials and query values) replaced, for server error bodies;
- :class:`RedactingFilter`: a logging filter that scrubs URLs and ``Bearer``/``Basic`` credentials
  from every record a handler emits (the CLI puts it on its handler, so ``-v`` logs are safe).

Secrets shorter than :data:`MIN_SECRET` characters are not searched for in free text: replacing
every "ab" would garble the message while hiding nothing a guess would not find.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "[redacted]"
MIN_SECRET = 4

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>`]+")
_TRAILING = ".,;:!?)]}"
_CREDENTIALS = re.compile(r"\b(Bearer|Basic)\s+[^\s\"',;]+", re.IGNORECASE)


def public_url(url: str) -> str:
    """``url`` fit for logs, files and messages: no ``user:password@``, no query values, no fragment."""
    parts = urlsplit(url)
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # an unparsable port: keep what follows the user info as it is
        host, port = parts.netloc.rpartition("@")[2], None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, _public_query(parts.query), ""))


def _public_query(query: str) -> str:
    items = []
    for item in query.split("&"):
        if not item:
            continue
        name, equals, _ = item.partition("=")
        items.append(f"{name}={REDACTED}" if equals else REDACTED)
    return "&".join(items)


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL: user name, password, and query values (decoded and as written)."""
    parts = urlsplit(url)
    found = [parts.username or "", parts.password or ""]
    for item in parts.query.split("&"):
        name, equals, value = item.partition("=")
        secret = value if equals else name
        found += [secret, unquote(secret)]
    return [s for s in found if s]


def scrub_urls(text: str) -> str:
    """``text`` with every URL in it replaced by its :func:`public_url`; punctuation that ends a
    sentence right after a URL (``http://h:8000/v1;``) stays outside it."""

    def public(match: re.Match) -> str:
        url = match.group(0)
        bare = url.rstrip(_TRAILING)
        return public_url(bare) + url[len(bare) :]

    return _URL.sub(public, text)


def scrub(text: str) -> str:
    """``text`` with its URLs made public and any ``Bearer``/``Basic`` credential replaced."""
    return _CREDENTIALS.sub(lambda m: f"{m.group(1)} {REDACTED}", scrub_urls(text))


class Redactor:
    """Replaces known secrets (and URL credentials, and Authorization values) in texts from outside."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return scrub(text)


class RedactingFilter(logging.Filter):
    """A handler filter that scrubs URL credentials, query values and Authorization values from
    every record (the HTTP libraries log each request's full URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
