"""Serving the app with gunicorn: `cds-service serve` runs this; production
deployments can use it or plain `gunicorn 'cds_service.hooks.server:worker_app()'`."""

from __future__ import annotations

import gc
import threading

from gunicorn.app.base import BaseApplication

from ..engine.record import validations_done
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


class MemoFreezer:
    """Keeps the validation memo's models (engine/record.py) out of the cyclic GC's
    full collections. Each full collection walks every object the GC tracks: with
    300 charts' models held, ~80 ms, and a 1,000-observation prefetch (whose parse
    promotes its objects) set one off every third call (bench/hook_bench.py). Once
    `every` more resources have been validated, after the response has gone out:
    a full collection (of what is not frozen yet: cheap after the first), then
    gc.freeze() of what is left, the new models among it. Frozen objects are still
    freed when the memo drops them; what a freeze could keep for good is a cycle
    of a request still in flight on another thread (~8 kB each)."""

    def __init__(self, every: int = 256):
        self.every = every
        self._frozen_at = validations_done()
        self._lock = threading.Lock()

    def after_response(self) -> None:
        if validations_done() - self._frozen_at < self.every or not self._lock.acquire(blocking=False):
            return
        try:
            self._frozen_at = validations_done()
            gc.collect()
            gc.freeze()
        finally:
            self._lock.release()


def settle_gc(app) -> None:
    """What a worker does to the cyclic GC once start-up is done: freeze what start-up
    built (trial definitions, models, templates: it lives as long as the worker), and
    freeze the validated models as the memo gains them (MemoFreezer)."""
    freezer = MemoFreezer()

    @app.after_request
    def _freeze_after_response(response):
        response.call_on_close(freezer.after_response)
        return response

    gc.freeze()


def worker_app(settings: Settings | None = None):
    """The app for one server worker: `create_app`, then settle_gc(). For plain
    gunicorn: `gunicorn 'cds_service.hooks.server:worker_app()'`."""
    from .app import create_app

    app = create_app(settings)
    settle_gc(app)
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
