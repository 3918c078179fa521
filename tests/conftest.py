import pytest

from cds_service.trials import load_trials


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

    return make


@pytest.fixture
def client(make_app):
    return make_app().test_client()
