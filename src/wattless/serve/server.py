"""`wattless serve`: the app under uvicorn, started by one call.

The cascade is loaded (and its calibration checked) before the port is bound, so a bad file is one line
and exit code 2, never a server that fails on its first request. With ``workers`` > 1 uvicorn starts that
many processes, each loading the cascade itself from the settings passed in the environment (the app
holds no state between requests, so they need nothing else)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from wattless.errors import ServeError
from wattless.serve.cascade import load_cascade
from wattless.serve.config import ServeSettings

__all__ = ["serve", "asgi_app", "app_from_env", "settings_for", "ENV_CASCADE", "ENV_SETTINGS"]

ENV_CASCADE = "WATTLESS_SERVE_CASCADE"
ENV_SETTINGS = "WATTLESS_SERVE_SETTINGS"


def settings_for(base: ServeSettings, **overrides: Any) -> ServeSettings:
    """``base`` with the options given (None: keep), validated like the file's [serve] table."""
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return ServeSettings.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise ServeError(problems) from None


def _check_port(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port}: give a port from 0 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host!r} cannot be resolved ({exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from None


def asgi_app(cascade_path: str | Path, settings: ServeSettings | None = None) -> Any:
    """The app for ``cascade_path``, built where it is called: the builder other ASGI engines take (Ray Serve's
    ``serve.ingress(lambda: asgi_app(path))``), so each replica loads the cascade itself."""
    from wattless.serve.app import create_app

    return create_app(load_cascade(cascade_path), settings)


def _serving_stack() -> Any:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ServeError(f"wattless serve needs its serving stack ({exc}): pip install 'wattless[serve]'") from None
    return uvicorn


def app_from_env() -> Any:
    """The app for one uvicorn worker process (``--workers`` > 1), from the environment ``serve`` set."""
    from wattless.serve.app import create_app

    cascade = load_cascade(os.environ[ENV_CASCADE])
    return create_app(cascade, ServeSettings.model_validate_json(os.environ[ENV_SETTINGS]))


def serve(cascade_path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          settings: ServeSettings | None = None, log_level: str = "warning", on_ready: Any = None) -> None:
    """Serve the calibrated cascade until interrupted (SIGINT, SIGTERM)."""
    uvicorn = _serving_stack()
    from wattless.serve.app import create_app

    if workers < 1:
        raise ServeError(f"--workers {workers}: give at least 1")
    cascade = load_cascade(cascade_path)
    settings = settings or cascade.spec.serve
    _check_port(host, port)
    common = dict(host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    if on_ready is not None:
        on_ready(cascade, settings)
    if workers == 1:
        uvicorn.run(create_app(cascade, settings), **common)
        return
    os.environ[ENV_CASCADE] = str(Path(cascade_path).resolve())
    os.environ[ENV_SETTINGS] = settings.model_dump_json()
    import inspect

    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        # a worker imports torch and loads every tier before it answers; uvicorn's 5 s default kills it first
        common["timeout_worker_healthcheck"] = 120
    uvicorn.run("wattless.serve.server:app_from_env", factory=True, workers=workers, **common)
