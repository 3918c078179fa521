"""Feedback on cards: validated, stored durably before the 200, idempotent."""

import json

import pytest

from hookdata import demo

FEEDBACK = "/cds-services/trial-eligibility/feedback"


def post(client, body):
    return client.post(FEEDBACK, data=json.dumps(body), content_type="application/json")


def a_card(client):
    response = client.post("/cds-services/trial-eligibility", data=json.dumps(demo("eligible")),
                           content_type="application/json")
    return response.get_json()["cards"][0]


def test_accepted_and_overridden_feedback_as_clients_send_it(make_app):
    app = make_app()
    client = app.test_client()
    card = a_card(client)
    accepted = {"card": card["uuid"], "outcome": "accepted",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-06-15T14:02:10.52Z"}
    # the CDS Hooks sandbox dismisses without display and without userComment
    overridden = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00Z",
                  "overrideReason": {"reason": {"code": "already-screened",
                                                "system": card["overrideReasons"][0]["system"]}}}
    response = post(client, {"feedback": [accepted, overridden]})
    assert response.status_code == 200 and response.get_json() == {"stored": 2, "duplicates": 0}
    rows = app.extensions["trial_eligibility"].store.feedback()
    assert [(r["outcome"], r["known_card"]) for r in rows] == [("accepted", 1), ("overridden", 1)]
    assert rows[1]["override_code"] == "already-screened"


def test_repeated_feedback_is_stored_once_and_survives_a_restart(make_app):
    first = make_app()
    card = a_card(first.test_client())
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00+00:00"}
    assert post(first.test_client(), {"feedback": [item]}).get_json() == {"stored": 1, "duplicates": 0}
    restarted = make_app()  # same database file, new process state
    assert post(restarted.test_client(), {"feedback": [item, item]}).get_json() == {"stored": 0, "duplicates": 2}
    rows = restarted.extensions["trial_eligibility"].store.feedback()
    assert len(rows) == 1 and rows[0]["card"] == card["uuid"]


def test_feedback_for_an_unknown_card_is_kept_and_flagged(make_app):
    app = make_app()
    item = {"card": "no-such-card", "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00Z"}
    assert post(app.test_client(), {"feedback": [item]}).status_code == 200
    assert app.extensions["trial_eligibility"].store.feedback()[0]["known_card"] == 0


def test_free_text_comments_are_not_stored(make_app, tmp_path):
    app = make_app()
    item = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00Z",
            "overrideReason": {"userComment": "Mrs Ada Testpatient declined on the phone"}}
    assert post(app.test_client(), {"feedback": [item]}).status_code == 200
    assert app.extensions["trial_eligibility"].store.feedback()[0]["has_comment"] == 1
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("cds.sqlite3*"))
    assert b"Testpatient" not in stored


@pytest.mark.parametrize("body, field", [
    ({}, "feedback"),
    ({"feedback": []}, "feedback"),
    ({"feedback": [{"card": "c", "outcome": "maybe", "outcomeTimestamp": "2026-06-15T14:03:00Z"}]}, "outcome"),
    ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-06-15T14:03:00Z"}]},
     "acceptedSuggestions"),
    ({"feedback": [{"card": "c", "outcome": "overridden"}]}, "outcomeTimestamp"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]}, "outcomeTimestamp"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00"}]},
     "outcomeTimestamp"),
    ([1, 2], "body"),
])
def test_invalid_feedback_is_400(client, body, field):
    response = post(client, body)
    assert response.status_code == 400 and response.mimetype == "application/fhir+json"
    assert field in json.dumps(response.get_json())


def test_feedback_to_an_unknown_service_is_404(client):
    response = client.post("/cds-services/other/feedback", data="{}", content_type="application/json")
    assert response.status_code == 404
