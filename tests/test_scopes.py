import pytest

from cds_service.fhir.scopes import can_read


@pytest.mark.parametrize("scope, rtype, search, allowed", [
    ("user/Observation.read", "Observation", True, True),
    ("user/Observation.read", "Condition", True, False),
    ("patient/*.read", "Condition", True, True),
    ("user/*.*", "AllergyIntolerance", True, True),
    ("user/Observation.write", "Observation", True, False),
    ("patient/Observation.rs", "Observation", True, True),
    ("patient/Observation.r", "Observation", True, False),  # v2: read without search
    ("patient/Observation.r", "Observation", False, True),
    ("patient/Patient.r", "Patient", False, True),
    ("patient/Observation.rs?category=laboratory", "Observation", True, True),
    ("launch openid profile", "Patient", False, False),
    ("user/observation.read", "Observation", True, False),  # resource types are case-sensitive
    ("", "Patient", False, False),
    (None, "Patient", False, True),  # no token: an open, allowlisted server
])
def test_can_read(scope, rtype, search, allowed):
    assert can_read(scope, rtype, search=search) is allowed
