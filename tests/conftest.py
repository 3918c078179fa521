import logging
import os

import pytest

from cds_service.trials import load_trials

# Values that must never reach a log line or a database file, whatever a test
# sends: access tokens the tests use, and the demo patient's name, MRN and birth date.
SECRETS = ("tok-3f9a1c-never-log-me", "some-opaque-fhir-access-token", "Mei Lin", '"Mei"', "MRN-7000",
           "1978-03-22", "Ada Testpatient")


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    @property
    def lines(self) -> list[str]:
        return [self.format(r) for r in self.records]


@pytest.fixture(autouse=True)
def no_secrets_in_logs():
    """Every test, the whole suite's traffic: nothing it logs may carry a token or PHI."""
    capture = _Capture()
    logger = logging.getLogger("cds_service")
    logger.addHandler(capture)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(previous)
    text = "\n".join(capture.lines)
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"logged: {leaked}"


def assert_no_secrets_in_files(paths):
    for path in paths:
        data = path.read_bytes()
        leaked = [s for s in SECRETS if s.encode() in data]
        assert not leaked, f"{path.name} holds {leaked}"


@pytest.fixture(scope="session")
def trials():
    return load_trials()


@pytest.fixture(scope="session")
def nct06462092(trials):
    return trials["NCT06462092"]


import datetime as dt  # noqa: E402

EHR = "https://ehr.example.org/fhir"


@pytest.fixture
def make_app(tmp_path):
    """A fresh app per call, sharing one database under tmp_path (so tests can
    restart the service), with the evaluation date the gold set uses."""
    from flask.testing import FlaskClient

    from cds_service.hooks.app import create_app
    from cds_service.hooks.config import Settings

    class ClosingClient(FlaskClient):
        """Closes each response as a WSGI server does, so work deferred to
        response close (the audit write) has happened when the call returns."""

        def open(self, *args, **kwargs):
            kwargs.setdefault("buffered", True)
            return super().open(*args, **kwargs)

    def make(**overrides):
        settings = dict(allowed_fhir_servers=(EHR,), database=tmp_path / "cds.sqlite3",
                        evaluation_date=dt.date(2026, 6, 15), fhir_deadline=2.0)
        settings.update(overrides)
        app = create_app(Settings(**settings))
        app.test_client_class = ClosingClient
        return app

    yield make
    assert_no_secrets_in_files(p for p in tmp_path.glob("*.sqlite3*") if p.is_file())


@pytest.fixture
def client(make_app):
    return make_app().test_client()


@pytest.fixture(scope="session")
def hapi(tmp_path_factory):
    """The base URL of a real HAPI FHIR R4 server on 127.0.0.1: CDS_TEST_HAPI_URL (CI starts one),
    else one started here for the whole session (tests/hapi_server.py) and stopped at its end.
    Locally the tests using it skip without Java and Maven; under CI=true they never skip."""
    from cds_service.harness import FhirWriter
    from hapi_server import HapiServer, java_tools_missing

    url = os.environ.get("CDS_TEST_HAPI_URL")
    if url:
        FhirWriter(url).wait_ready()
        yield url
        return
    missing = java_tools_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: .ci/run must provide Java and Maven")
        pytest.skip(f"HAPI integration tests need Java and Maven ({missing})")
    server = HapiServer(log=tmp_path_factory.mktemp("hapi") / "hapi.log").start()
    print(f"HAPI started in {server.start_seconds:.1f} s")
    yield server.url
    server.stop()
