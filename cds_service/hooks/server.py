"""Serving the app with gunicorn: `cds-service serve` runs this; production
deployments can use it or plain `gunicorn 'cds_service.hooks.server:worker_app()'`."""

from __future__ import annotations

import gc

from gunicorn.app.base import BaseApplication

from .config import Settings


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        # Each worker builds its own app (thread pools and connections do not survive fork).
        return worker_app(self.settings)


def worker_app(settings: Settings | None = None):
    """The app for one server worker: `create_app`, then everything start-up built
    (trial definitions, models, templates), which lives as long as the worker, is
    frozen out of the cyclic GC, so that the full collections a large prefetch
    triggers do not walk it on every hook call (bench/hook_bench.py: p95 at 1,000
    observations ~90 ms → ~20 ms). For plain gunicorn:
    `gunicorn 'cds_service.hooks.server:worker_app()'`."""
    from .app import create_app

    app = create_app(settings)
    gc.freeze()
    return app


def serve(settings: Settings, *, host: str, port: int, workers: int = 1, threads: int = 4) -> int:
    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": max(1, workers),
        "threads": max(1, threads),
        "worker_class": "gthread",
        "timeout": 30,
        "graceful_timeout": 10,
        "accesslog": None,  # our own JSON audit lines carry what is needed, without query strings
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "cds-service",
    }
    _Gunicorn(settings, options).run()
    return 0
