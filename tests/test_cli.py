"""`cds-service evaluate`: the contract other programs rely on."""

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cds_service.cli import main
from makefile import recipe

HERE = Path(__file__).parent
GOLD = HERE / "gold" / "patients"
BASELINE = GOLD / "g001-baseline-eligible.json"


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_for_one_patient_is_a_single_object(capsys):
    code, out, err = run_cli(capsys, "evaluate", "--trial", "NCT06462092", "--as-of", "2026-06-15", str(BASELINE))
    assert code == 0 and err == ""
    body = json.loads(out)
    assert {"trial", "patient", "asOf", "status", "criteria"} <= set(body)
    assert (body["trial"], body["patient"], body["asOf"], body["status"]) == \
        ("NCT06462092", "g001", "2026-06-15", "eligible")
    first = body["criteria"][0]
    assert {"id", "kind", "result", "reason"} <= set(first)
    neutrophils = next(c for c in body["criteria"] if c["id"] == "neutrophils")
    assert neutrophils["evidence"][0]["converted"] == {"value": "3.2", "unit": "10*9/L"}


def _ndjson_of(*files):
    lines = []
    for f in files:
        for entry in json.loads(f.read_text())["entry"]:
            lines.append(json.dumps(entry["resource"]))
    return "\n".join(lines) + "\n"


def test_several_patients_give_an_array_and_ndjson_is_read(capsys, tmp_path):
    path = tmp_path / "three.ndjson"
    path.write_text(_ndjson_of(BASELINE, GOLD / "g011-her2-ihc-3plus.json", GOLD / "g079-male-patient.json"))
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))
    assert code == 0
    body = json.loads(out)
    assert [(b["patient"], b["status"]) for b in body] == \
        [("g001", "eligible"), ("g011", "ineligible"), ("g079", "eligible")]


def test_a_bundle_of_several_patients(capsys, tmp_path):
    entries = []
    for f in (BASELINE, GOLD / "g002-deceased.json"):
        entries += json.loads(f.read_text())["entry"]
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))
    assert [b["status"] for b in json.loads(out)] == ["eligible", "ineligible"]


def test_text_output_is_a_checklist(capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", "--format", "text",
                           str(GOLD / "g012-her2-ihc-2plus-no-ish.json"))
    assert code == 0
    assert "status: NEEDS-DATA" in out
    assert "? her2-negative" in out and "[equivocal]" in out
    assert "✔ neutrophils" in out and "👁 investigator-judgement" in out


def test_long_history_shows_the_results_not_read(capsys, tmp_path):
    bundle = json.loads(BASELINE.read_text())
    anc = next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == "g001-anc-1")
    for i in range(1, 31):  # a month of older counts
        older = json.loads(json.dumps(anc))
        older["id"] = f"anc-old-{i}"
        older["effectiveDateTime"] = f"2026-05-{i:02d}T08:00:00Z"
        bundle["entry"].append({"resource": older})
    path = tmp_path / "history.json"
    path.write_text(json.dumps(bundle))
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", "--format", "text", str(path))
    assert code == 0 and "· 30 more matching records not read" in out
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))
    neutrophils = next(c for c in json.loads(out)["criteria"] if c["id"] == "neutrophils")
    assert neutrophils["notRead"] == 30 and len(neutrophils["evidence"]) == 1


@pytest.mark.parametrize("content, message", [
    (b"this is not json", "not JSON or NDJSON"),
    (b'{"hello": "world"}', "not a FHIR resource"),
    (b"", "input is empty"),
    (b'[1, 2, 3]', "not a FHIR resource"),
    (b'{"resourceType": "Bundle", "entry": "nope"}', "Bundle.entry is not a list"),
    (b'{"resourceType": "Bundle", "type": "collection", "entry": []}', "no patient found"),
])
def test_unreadable_or_non_fhir_input_exits_2_with_one_line(capsys, tmp_path, content, message):
    path = tmp_path / "input.json"
    path.write_bytes(content)
    code, out, err = run_cli(capsys, "evaluate", str(path))
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_file_and_unknown_trial(capsys):
    code, _, err = run_cli(capsys, "evaluate", "/no/such/file.json")
    assert code == 2 and "cannot read /no/such/file.json" in err
    code, _, err = run_cli(capsys, "evaluate", "--trial", "NCT00000000", str(BASELINE))
    assert code == 2 and "unknown trial NCT00000000" in err


def test_trial_file_option(capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--trial-file", str(HERE / "trials" / "TEST-0002.yaml"),
                           "--as-of", "2026-06-15", str(BASELINE))
    assert code == 0 and json.loads(out)["trial"] == "TEST-0002"


def test_several_trials_give_one_evaluation_per_patient_and_trial(capsys):
    files = [str(HERE / "trials" / name) for name in ("TEST-0002.yaml", "TEST-0003.yaml")]
    code, out, _ = run_cli(capsys, "evaluate", "--trial-file", files[0], "--trial-file", files[1],
                           "--as-of", "2026-06-15", str(BASELINE))
    assert code == 0 and [e["trial"] for e in json.loads(out)] == ["TEST-0002", "TEST-0003"]
    code, out, _ = run_cli(capsys, "evaluate", "--trial-file", files[0], "--trial-file", files[1], "--format",
                           "text", "--as-of", "2026-06-15", str(BASELINE))
    assert code == 0 and "TEST-0002" in out and "TEST-0003" in out


@pytest.mark.parametrize("trial, expected", [
    ("all", ["NCT01325207", "NCT06462092"]),  # every bundled trial, the completed one too, in file order
    ("NCT06462092", ["NCT06462092"]),
    ("NCT06462092, NCT06462092", ["NCT06462092"]),  # each trial once
    ("NCT01325207,NCT06462092", ["NCT01325207", "NCT06462092"]),
])
def test_trial_accepts_a_list_of_ids_or_all(capsys, trial, expected):
    code, out, _ = run_cli(capsys, "evaluate", "--trial", trial, "--as-of", "2026-06-15", str(BASELINE))
    evaluations = json.loads(out)
    evaluations = evaluations if isinstance(evaluations, list) else [evaluations]
    assert code == 0 and [e["trial"] for e in evaluations] == expected


def test_without_trial_the_enrolling_trials_are_evaluated(capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(BASELINE))
    assert code == 0 and json.loads(out)["trial"] == "NCT06462092"  # NCT01325207 is Completed


def test_make_demo_prints_every_demo_patient_against_both_trials(capsys):
    # The Makefile's `demo` recipe as it is (--trial all: the completed NCT01325207 too).
    (line,) = [line.removeprefix("$(BIN)/cds-service ") for line in recipe("demo")]
    args = [str(HERE.parent / a) if a.endswith(".json") else a for a in line.split()]
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and err == ""
    found = re.findall(r"^(NCT\d+) — .*\nPatient (\S+) · as of 2026-06-15 · status: (\S+)", out, re.M)
    assert {(patient, trial): status for trial, patient, status in found} == {
        ("g001", "NCT06462092"): "ELIGIBLE", ("g001", "NCT01325207"): "INELIGIBLE",
        ("g012", "NCT06462092"): "NEEDS-DATA", ("g012", "NCT01325207"): "NEEDS-DATA",
        ("g066", "NCT06462092"): "NEEDS-DATA", ("g066", "NCT01325207"): "INELIGIBLE",
        ("g011", "NCT06462092"): "INELIGIBLE", ("g011", "NCT01325207"): "NEEDS-DATA",  # no KPS, no LVEF
        ("g201", "NCT06462092"): "INELIGIBLE", ("g201", "NCT01325207"): "ELIGIBLE",
    }


@pytest.mark.parametrize("name", ["her2-positive", "her2-positive-eligible"])
def test_demo_request_names_each_demo_patient(capsys, name):
    from cds_service.demo import DEMO_PATIENTS

    code, out, _ = run_cli(capsys, "demo-request", name, "--as-of", "2026-06-15")
    assert code == 0 and json.loads(out)["context"]["patientId"] == DEMO_PATIENTS[name]


def test_trial_and_trial_file_together_are_refused(capsys):
    code, _, err = run_cli(capsys, "evaluate", "--trial", "NCT06462092", "--trial-file",
                           str(HERE / "trials" / "TEST-0002.yaml"), str(BASELINE))
    assert code == 2 and "not both" in err


def test_console_script_never_prints_a_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": ')
    exe = Path(sys.executable).parent / "cds-service"
    proc = subprocess.run([str(exe), "evaluate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = subprocess.run([str(exe), "evaluate", "--as-of", "2026-13-01", str(BASELINE)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "not a date" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(exe), "evaluate", "--as-of", "2026-06-15", "-"], input=BASELINE.read_text(),
                          capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "eligible"


# -- files with resources of patients who are not in them (issue 13, item 7) ------------------------

def _urn_transaction(bundle: dict) -> dict:
    """The bundle as a Synthea-style transaction: urn:uuid fullUrls and references."""
    urn = {f"{e['resource']['resourceType']}/{e['resource']['id']}":
           f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, e['fullUrl'])}" for e in bundle["entry"]}
    text = json.dumps(bundle)
    for ref, u in urn.items():
        text = text.replace(f'"reference": "{ref}"', f'"reference": "{u}"')
    out = json.loads(text)
    out["type"] = "transaction"
    for e in out["entry"]:
        e["fullUrl"] = urn[f"{e['resource']['resourceType']}/{e['resource']['id']}"]
        e["request"] = {"method": "POST", "url": e["resource"]["resourceType"]}
    return out


def _assert_no_identifiers(err: str, *identifiers: str):
    for identifier in identifiers:
        assert identifier not in err
    assert "urn:uuid:" not in err and "Patient/" not in err and "Traceback" not in err


def test_concatenated_bundles_whose_urn_references_no_longer_resolve_are_skipped(capsys, tmp_path):
    whole = _urn_transaction(json.loads(BASELINE.read_text()))
    labs = [e for e in whole["entry"] if e["resource"]["resourceType"] == "Observation"]
    first = dict(whole, entry=[e for e in whole["entry"] if e not in labs])
    second = dict(whole, entry=labs)  # references the Patient of the first Bundle by urn:uuid
    path = tmp_path / "two-bundles.ndjson"
    path.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    code, out, err = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))
    assert code == 0
    body = json.loads(out)
    assert body["patient"] == "g001"  # one patient, not one more without `patient` for the orphans
    assert err == (f"cds-service: skipped {len(labs)} resources: their subject is a urn: reference that "
                   "resolves to no Patient in their Bundle\n")
    _assert_no_identifiers(err, "g001", "Lin", "MRN-700001")
    # The labs were not read as the patient's: they are missing, not passed.
    neutrophils = next(c for c in body["criteria"] if c["id"] == "neutrophils")
    assert neutrophils["result"] == "unknown" and "evidence" not in neutrophils
    # Within one Bundle the same urn:uuid references resolve.
    path.write_text(json.dumps(whole))
    code, out, err = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))
    assert code == 0 and err == "" and json.loads(out)["status"] == "eligible"


def test_resources_of_an_absent_patient_are_not_evaluated_nor_given_to_another(capsys, tmp_path):
    bundle = json.loads(BASELINE.read_text())
    hiv = {"resourceType": "Condition", "id": "other-hiv",
           "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                          "code": "active"}]},
           "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "B20"}]},
           "subject": {"reference": "Patient/someone-else"}}
    device_obs = {"resourceType": "Observation", "id": "pump-1", "status": "final",
                  "code": {"text": "Infusion pump check"}, "subject": {"reference": "Device/pump-7"}}
    by_url = dict(hiv, id="other-hiv-2", subject={"reference": "https://hie.example.org/fhir/Patient/x9"})
    bundle["entry"] += [{"resource": hiv}, {"resource": by_url}, {"resource": device_obs}]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(bundle))
    code, out, err = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))
    assert code == 0
    body = json.loads(out)  # a single object: the absent patients are not evaluated
    assert body["patient"] == "g001" and body["status"] == "eligible"
    assert next(c for c in body["criteria"] if c["id"] == "immunodeficiency")["result"] == "pass"
    assert err.splitlines() == [
        "cds-service: skipped 2 resources: their subject names a Patient that is not in this input",
        "cds-service: skipped 1 resource: their subject is not a Patient (a Group, Device, Location... or an "
        "unreadable reference)"]
    _assert_no_identifiers(err, "someone-else", "x9", "pump-7", "g001")


def test_a_file_without_any_patient_is_a_clear_error(capsys, tmp_path):
    bundle = json.loads(BASELINE.read_text())
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Patient"]
    path = tmp_path / "no-patient.json"
    path.write_text(json.dumps(bundle))
    code, out, err = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))
    assert code == 2 and out == ""
    assert err == (f"cds-service: no patient found in the input: it holds no Patient resource; skipped "
                   f"{len(bundle['entry'])} resources: their subject names a Patient that is not in this input\n")
    _assert_no_identifiers(err, "g001")
    exe = Path(sys.executable).parent / "cds-service"
    proc = subprocess.run([str(exe), "evaluate", "--as-of", "2026-06-15", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr == err


def test_every_evaluation_carries_patient_even_for_a_patient_without_id(capsys, tmp_path):
    one = _urn_transaction(json.loads(BASELINE.read_text()))
    patient_entry = next(e for e in one["entry"] if e["resource"]["resourceType"] == "Patient")
    del patient_entry["resource"]["id"]  # a transaction's new Patient: named by its fullUrl only
    bare = json.loads((GOLD / "g079-male-patient.json").read_text())
    for e in bare["entry"]:  # a Patient with neither id nor fullUrl; loose resources that name no patient
        e.pop("fullUrl", None)
        e["resource"].pop("subject", None), e["resource"].pop("patient", None)
        if e["resource"]["resourceType"] == "Patient":
            del e["resource"]["id"]
    path = tmp_path / "no-ids.ndjson"
    path.write_text(json.dumps(one) + "\n" + json.dumps(bare) + "\n")
    code, out, err = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))
    assert code == 0
    body = json.loads(out)
    assert [b.get("patient") for b in body] == [patient_entry["fullUrl"], "#2"]
    assert body[0]["status"] == "eligible"  # its urn:uuid references resolved in its Bundle
    # With two patients, resources that name none cannot be given to either.
    assert err == (f"cds-service: skipped {len(bare['entry']) - 1} resources: they name no patient and the input "
                   "holds several patients\n")
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", "--format", "text", str(path))
    headers = [line for line in out.splitlines() if line.startswith("Patient ")]
    assert [h.split(" · ")[0] for h in headers] == [f"Patient {patient_entry['fullUrl']}", "Patient #2"]


def test_text_report_shows_numbers_at_the_precision_recorded(capsys, tmp_path):
    bundle = json.loads(BASELINE.read_text())
    for e in bundle["entry"]:
        r = e["resource"]
        if r.get("id") == "g001-tbil-1":  # µmol/L with its reference range in mg/dL: a converted ULN
            r["valueQuantity"] = {"value": 12, "unit": "umol/L", "system": "http://unitsofmeasure.org",
                                  "code": "umol/L"}
            r["referenceRange"] = [{"high": {"value": 1.2, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                             "code": "mg/dL"}}]
        if r.get("id") == "g001-hb-1":
            r["valueQuantity"]["comparator"] = "<"
    path = tmp_path / "units.json"
    path.write_text(json.dumps(bundle))
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", "--format", "text", str(path))
    assert code == 0 and "· 12 umol/L · ULN 20.5 umol/L ·" in out
    assert "· <12.1 g/dL · = <121 g/L ·" in out  # the comparator stays with the value, converted too
    assert not re.search(r"\d\.\d{4}", out)
    code, out, _ = run_cli(capsys, "evaluate", "--as-of", "2026-06-15", str(path))  # the JSON keeps it all
    bilirubin = next(c for c in json.loads(out)["criteria"] if c["id"] == "bilirubin")
    assert bilirubin["evidence"][0]["uln"]["value"].startswith("20.5128205128")


def test_the_text_report_names_each_order_by_its_code_system(capsys):
    demo = Path(__file__).parents[1] / "cds_service" / "demo" / "patients.json"
    code, out, _ = run_cli(capsys, "evaluate", "--trial", "NCT01325207", "--as-of", "2026-06-15", "--format", "text",
                           str(demo))
    assert code == 0 and "→ order: Transthoracic echocardiography (SNOMED CT 433236007)" in out
    assert "(LOINC 433236007)" not in out
