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


# A full (oldest-generation) collection runs after this many middle-generation collections
# (Python's default: 10), and only when the objects promoted since the last one are a quarter of
# those that survived it. A large prefetch's parse promotes its objects while it runs, and the
# validation memo (engine/record.py) keeps thousands of models that every full collection walks:
# ~85 ms each with ~3,000 models held, every third call at 1,000 observations (bench/hook_bench.py).
FULL_COLLECTION_AFTER = 1000


def settle_gc() -> None:
    """What a worker does to the cyclic GC once start-up is done: freeze what start-up built
    (trial definitions, models, templates: it lives as long as the worker, and full
    collections need not walk it), and run full collections a hundred times less often."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)


def worker_app(settings: Settings | None = None):
    """The app for one server worker: `create_app`, then settle_gc(). For plain
    gunicorn: `gunicorn 'cds_service.hooks.server:worker_app()'`."""
    from .app import create_app

    app = create_app(settings)
    settle_gc()
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
