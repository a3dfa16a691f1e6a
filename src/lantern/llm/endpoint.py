"""Where answers come from: the configured endpoint, or the embedded server for the life of a block.

Every recipe that prompts (the LLM stage on its own, the pipeline for all its seeds, ablations,
annotation) goes through :func:`endpoint`, so "start the embedded server unless base URLs are
given" is decided in one place, together with the defaults each kind of server needs
(:data:`lantern.llm.config.SERVER_KINDS`, :data:`~lantern.llm.config.EMBEDDED`): the embedded
server and llama.cpp's get one request at a time (they decode one at a time; queueing more there
only makes them time out while they wait) and a long timeout (a small CPU model needs minutes for a
long field), unless the user set either.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from lantern.errors import LanternError
from lantern.llm.config import EMBEDDED, REMOTE_SERVER_KIND, Endpoint, KindDefaults, kind_defaults

DUMMY_KEY = "sk-local-no-key"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def with_defaults(config: Endpoint, defaults: KindDefaults) -> Endpoint:
    """``config`` with the concurrency and timeout it leaves unset taken from ``defaults``."""
    return replace(
        config,
        concurrency=config.concurrency or defaults.concurrency,
        timeout=config.timeout or defaults.timeout,
    )


@contextmanager
def endpoint(
    config: Endpoint, notify: Callable[[str], None] | None = None, log_path: Path | None = None
) -> Iterator[Endpoint]:
    """``config`` with its server kind and the kind's defaults resolved when it names base URLs;
    otherwise the embedded server, started now and stopped when the block exits, as an Endpoint
    pointing at it (``embedded`` set, ``local_backend`` the backend that serves it).

    ``log_path`` is where the embedded server writes its log (the run directory's; without one, an
    anonymous temporary file that nothing can leave behind).
    """
    if not config.local:
        kind = config.server_kind or REMOTE_SERVER_KIND
        yield with_defaults(replace(config, server_kind=kind), kind_defaults(kind))
        return
    from lantern.llm.local import LocalServer

    server = LocalServer(config.local_model, log_path=log_path, backend=config.local_backend)
    if notify is not None:
        notify(f"[llm] starting the embedded local LLM ({server.backend} server)")
    with server:
        resolved = replace(
            config,
            base_urls=[server.base_url],
            model=server.model,
            server_kind=config.server_kind or server.server_kind,
            local_backend=server.backend,
            embedded=True,
        )
        yield with_defaults(resolved, EMBEDDED)


def resolve_api_key(env_name: str, base_urls: list[str]) -> str:
    """The key from ``env_name``; a dummy for loopback endpoints without one; else a clear error."""
    key = os.environ.get(env_name)
    if key:
        return key
    if all((urlsplit(u).hostname or "") in LOOPBACK_HOSTS for u in base_urls):
        return DUMMY_KEY
    raise LanternError(
        f"environment variable {env_name} is not set (it must hold the API key for the endpoint)"
    )
