"""Feedback on cards: validated (CDS Hooks 2.0 §Feedback and its logical model), stored
durably before the 200, idempotent."""

import json
import re

import pytest

from hookdata import demo

FEEDBACK = "/cds-services/trial-eligibility/feedback"
CARD = "9368d37b-283f-44a0-93ea-547cebab93ed"  # the spec's example card uuid


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
    item = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00Z"}
    assert post(app.test_client(), {"feedback": [item]}).status_code == 200
    assert app.extensions["trial_eligibility"].store.feedback()[0]["known_card"] == 0


def test_free_text_comments_are_not_stored(make_app, tmp_path):
    app = make_app()
    item = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00Z",
            "overrideReason": {"userComment": "Mrs Ada Testpatient declined on the phone"}}
    assert post(app.test_client(), {"feedback": [item]}).status_code == 200
    assert app.extensions["trial_eligibility"].store.feedback()[0]["has_comment"] == 1
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("cds.sqlite3*"))
    assert b"Testpatient" not in stored


def item(**fields):
    return {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00Z", **fields}


@pytest.mark.parametrize("body, expression", [
    ({}, "feedback"),
    ({"feedback": {}}, "feedback"),
    ({"feedback": [item(outcome="maybe")]}, "feedback[0].outcome"),
    ({"feedback": [item(outcome="accepted")]}, "feedback[0]"),  # acceptedSuggestions required (cds-fb-2)
    ({"feedback": [{"card": CARD, "outcome": "overridden"}]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [item(outcomeTimestamp="yesterday")]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [item(outcomeTimestamp="2026-06-15T14:03:00")]}, "feedback[0].outcomeTimestamp"),
    # the card and the accepted suggestions are named by their uuids (type uuid in the logical model)
    ({"feedback": [item(card="c1")]}, "feedback[0].card"),
    ({"feedback": [item(card="urn:uuid:" + CARD)]}, "feedback[0].card"),
    ({"feedback": [item(card=CARD + "\n")]}, "feedback[0].card"),
    ({"feedback": [item(), item(outcome="accepted", acceptedSuggestions=[{"id": "s1"}])]},
     "feedback[1].acceptedSuggestions[0].id"),
    # an overrideReason holds a reason, a userComment or both (cds-fb-3): {} is not one
    ({"feedback": [item(overrideReason={})]}, "feedback[0].overrideReason"),
    ({"feedback": [item(overrideReason={"userComment": ""})]}, "feedback[0].overrideReason"),
    ({"feedback": [item(overrideReason={"reason": {}})]}, "feedback[0].overrideReason.reason.code"),
])
def test_invalid_feedback_is_400_naming_the_field_in_fhirpath(make_app, body, expression):
    app = make_app()
    response = post(app.test_client(), body)
    assert response.status_code == 400 and response.mimetype == "application/fhir+json"
    issues = response.get_json()["issue"]
    assert expression in [e for issue in issues for e in issue.get("expression", [])], issues
    assert not [e for issue in issues for e in issue.get("expression", []) if re.search(r"\.\d", e)]  # no a.0.b
    assert app.extensions["trial_eligibility"].store.feedback() == []  # nothing of it stored


def test_a_body_that_is_not_an_object_is_400_without_an_expression(client):
    response = post(client, [1, 2])
    assert response.status_code == 400
    assert response.get_json()["issue"] == [{"severity": "error", "code": "invalid",
                                             "diagnostics": "the body must be a JSON object"}]


def test_an_empty_feedback_list_is_accepted_and_stores_nothing(make_app):
    # The logical model: feedback 0..*, json-empty-behavior "present" (the array is there, possibly empty).
    app = make_app()
    response = post(app.test_client(), {"feedback": []})
    assert response.status_code == 200 and response.get_json() == {"stored": 0, "duplicates": 0}
    assert app.extensions["trial_eligibility"].store.feedback() == []


def test_override_reasons_as_the_spec_shows_them(make_app):
    app = make_app()
    reason = {"code": "d7ecf885", "system": "https://example.com/cds-hooks/override-reason-system"}
    bodies = [item(overrideReason={"reason": reason, "userComment": "A comment entered by the clinician."}),
              item(overrideReason={"reason": reason}, outcomeTimestamp="2026-06-15T14:04:00Z"),
              item(overrideReason={"userComment": "only a comment"}, outcomeTimestamp="2026-06-15T14:05:00Z"),
              item(card=CARD.upper(), outcomeTimestamp="2026-06-15T14:06:00Z")]
    response = post(app.test_client(), {"feedback": bodies})
    assert response.status_code == 200 and response.get_json() == {"stored": 4, "duplicates": 0}


def test_feedback_to_an_unknown_service_is_404(client):
    response = client.post("/cds-services/other/feedback", data="{}", content_type="application/json")
    assert response.status_code == 404
