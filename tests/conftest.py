import pytest

from cds_service.trials import load_trials


@pytest.fixture(scope="session")
def trials():
    return load_trials()


@pytest.fixture(scope="session")
def nct06462092(trials):
    return trials["NCT06462092"]
