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
    from cds_service.hooks.app import create_app
    from cds_service.hooks.config import Settings

    def make(**overrides):
        settings = dict(allowed_fhir_servers=(EHR,), database=tmp_path / "cds.sqlite3",
                        evaluation_date=dt.date(2026, 6, 15), fhir_deadline=2.0)
        settings.update(overrides)
        return create_app(Settings(**settings))

    return make


@pytest.fixture
def client(make_app):
    return make_app().test_client()
