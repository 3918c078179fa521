"""`cds-service evaluate`: the contract other programs rely on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.cli import main

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
