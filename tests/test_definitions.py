"""Trial definitions are data: validated on load with errors naming the file,
the criterion and the field; a new trial needs no code change."""

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from cds_service.engine import PatientRecord, Result, Status, evaluate
from cds_service.fhir.bundles import patient_groups_from_bytes
from cds_service.trials import DefinitionError, load_codesets, load_trial, load_units
from cds_service.trials.loader import load_trials

HERE = Path(__file__).parent
SECOND = HERE / "trials" / "TEST-0002.yaml"
GOLD = HERE / "gold" / "patients"
AS_OF = dt.date(2026, 6, 15)


def gold(name):
    group = patient_groups_from_bytes((GOLD / name).read_bytes())[0]
    return PatientRecord(group.resources, group.full_urls)


def test_bundled_trial_uses_only_known_code_sets_and_cites_every_code(nct06462092):
    ids = [c.id for c in nct06462092.definition.criteria]
    assert ids == ["alive", "breast-cancer", "her2-negative", "leptomeningeal-metastases", "age", "neutrophils",
                   "platelets", "hemoglobin", "bilirubin", "transaminases", "study-drug-allergy",
                   "immunodeficiency", "severe-comorbidity", "pregnancy-breastfeeding", "contraception",
                   "investigator-judgement"]
    for criterion in nct06462092.definition.criteria:
        assert criterion.protocol_text.strip() and criterion.interpretation.strip()
    for name, codeset in nct06462092.codesets_used().items():
        assert all(e.source.strip() for e in codeset.entries), name


def test_a_second_trial_is_only_a_data_file():
    trial = load_trial(SECOND)
    e = evaluate(trial, gold("g001-baseline-eligible.json"), AS_OF)  # 48-year-old woman, HER2 IHC 1+
    got = {c.id: c.result for c in e.criteria}
    assert got == {"breast-cancer": Result.PASS, "her2-positive": Result.FAIL, "age-21-45": Result.FAIL,
                   "anc-2": Result.PASS, "hb-125": Result.FAIL, "ast-3x": Result.PASS, "no-hiv": Result.PASS,
                   "male-question": Result.NOT_APPLICABLE}
    assert e.status is Status.INELIGIBLE and e.trial == "TEST-0002"
    man = evaluate(trial, gold("g079-male-patient.json"), AS_OF)
    assert man.criterion("male-question").result is Result.REVIEW


def test_second_trial_boundaries_follow_its_own_comparators():
    trial = load_trial(SECOND)
    # g060: AST exactly 2.5 x ULN: fails NCT06462092 (>= 2.5) but passes "> 3 x ULN"
    assert evaluate(trial, gold("g060-ast-2p5x-uln.json"), AS_OF).criterion("ast-3x").result is Result.PASS
    # g011: IHC 3+ is what TEST-0002 requires
    assert evaluate(trial, gold("g011-her2-ihc-3plus.json"), AS_OF).criterion("her2-positive").result is Result.PASS


def _write(tmp_path, text, name="BAD.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _trial_text(criterion: str) -> str:
    head = SECOND.read_text().split("criteria:")[0]
    return head + "criteria:\n" + textwrap.indent(textwrap.dedent(criterion), "  ")


@pytest.mark.parametrize("criterion, expected", [
    ("""\
     - id: anc
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: lab, lookbackDays: 14, analytes: [{name: ANC, codes: [no-such-set], failWhen: {comparator: "<", value: 2, unit: "10*9/L"}}]}
     """, "criterion 'anc': code set 'no-such-set' is not defined"),
    ("""\
     - id: anc
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: lab, lookbackDays: 14, analytes: [{name: ANC, codes: [absolute-neutrophil-count], failWhen: {comparator: "<", value: 2, unit: "10*9/Lx"}}]}
     """, "criterion 'anc': '10*9/Lx' is not a UCUM unit"),
    ("""\
     - id: anc
       kind: exclusion
       title: t
       interpretation: i
       rule: {type: review, prompt: x}
     """, "criterion 'anc': protocolText: Field required"),
    ("""\
     - id: anc
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: lab, lookbackDays: 14, analytes: [{name: ANC, codes: [absolute-neutrophil-count], failWhen: {comparator: "<", value: 2, unit: "10*9/L", ulnMultiple: 2}}]}
     """, "criterion 'anc': rule.analytes[0].failWhen: give either value (with unit) or ulnMultiple"),
    ("""\
     - id: anc
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: lab, lookbackDays: 14, analytes: [{name: ANC, codes: [absolute-neutrophil-count], failWhen: {comparator: "=<", value: 2, unit: "10*9/L"}}]}
     """, "criterion 'anc': rule.analytes[0].failWhen.comparator"),
    ("""\
     - id: anc
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: telepathy}
     """, "criterion 'anc': rule"),
    ("""\
     - id: Bad Id
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: review, prompt: x}
     """, "criterion 'Bad Id': id: String should match pattern"),
    ("""\
     - id: anc
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: lab, lookbackDays: 14, order: nowhere, analytes: [{name: ANC, codes: [absolute-neutrophil-count], failWhen: {comparator: "<", value: 2, unit: "10*9/L"}}]}
     """, "order 'nowhere' is not defined"),
    ("""\
     - id: her2
       kind: inclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: her2-status, require: positive, orderWhenNone: no-such-order, ihcCodes: [her2-ihc],
              ishCodes: [her2-ish], ihcNegativeScoreCodes: [her2-ihc-score-negative],
              ihcEquivocalScoreCodes: [her2-ihc-score-equivocal], ihcPositiveScoreCodes: [her2-ihc-score-positive],
              negativeValueCodes: [result-negative], positiveValueCodes: [result-positive],
              equivocalValueCodes: [result-equivocal]}
     """, "criterion 'her2': order 'no-such-order' is not defined"),
    ("""\
     - id: anc
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: review, prompt: x}
     - id: anc
       kind: exclusion
       title: t
       protocolText: p
       interpretation: i
       rule: {type: review, prompt: x}
     """, "criterion id 'anc' appears twice"),
])
def test_definition_errors_name_file_criterion_and_field(tmp_path, criterion, expected):
    path = _write(tmp_path, _trial_text(criterion))
    with pytest.raises(DefinitionError) as err:
        load_trial(path)
    assert "BAD.yaml" in str(err.value)
    assert expected in str(err.value)


def test_an_order_without_a_display_is_refused(tmp_path):
    # A card's suggestion carries the order's code and display: none may be empty.
    text = SECOND.read_text().replace("display: CBC panel - Blood by Automated count", 'display: ""')
    assert 'display: ""' in text
    with pytest.raises(DefinitionError, match=r"orders.cbc.display: String should have at least 1 character"):
        load_trial(_write(tmp_path, text))


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = _write(tmp_path, "nctId: X\ncriteria: [\n  - id: a\n")
    with pytest.raises(DefinitionError, match=r"BAD.yaml: line \d+ not valid YAML"):
        load_trial(path)


def test_codeset_file_errors(tmp_path):
    _write(tmp_path, """\
        codesets:
          broken:
            title: t
            codes:
              - {system: "http://loinc.org", code: "1-8", prefix: "1", display: d, source: s}
        """, name="broken.yaml")
    with pytest.raises(DefinitionError, match=r"broken.yaml: codesets.broken.codes\[0\]: give exactly one of code"):
        load_codesets(tmp_path)
    _write(tmp_path, """\
        codesets:
          broken:
            title: t
            codes:
              - {system: "http://loinc.org", code: "1-8", display: d}
        """, name="broken.yaml")
    with pytest.raises(DefinitionError, match=r"codes\[0\].source: Field required"):
        load_codesets(tmp_path)


def test_duplicate_codeset_names_across_files(tmp_path):
    body = ("codesets:\n  x:\n    title: t\n    provenance: {source: s, version: v, method: m}\n"
            "    codes:\n      - {system: s, code: c, display: d, source: s}\n")
    _write(tmp_path, body, name="a.yaml")
    _write(tmp_path, body, name="b.yaml")
    with pytest.raises(DefinitionError, match="code set 'x' is also defined in a.yaml"):
        load_codesets(tmp_path)


def test_unit_table_errors(tmp_path):
    path = _write(tmp_path, "aliases:\n  - {unit: 'K/uL', ucum: 'K/uLx', source: s}\n", name="units.yaml")
    with pytest.raises(DefinitionError, match="'K/uLx' is not a UCUM unit"):
        load_units(path)


def test_load_trials_selects_and_rejects_unknown_ids():
    assert list(load_trials(only=["NCT06462092"])) == ["NCT06462092"]
    with pytest.raises(DefinitionError, match="unknown trial"):
        load_trials(only=["NCT00000000"])


def test_only_enrolling_trials_are_evaluated_unless_named(tmp_path):
    # A completed trial's card would send clinicians to a study that no longer enrols.
    from cds_service.trials import enrolling_trials, load_trials

    for name, status in (("TEST-0002.yaml", "Completed"), ("TEST-0003.yaml", "Not yet recruiting")):
        text = (HERE / "trials" / name).read_text()
        (tmp_path / name).write_text(text.replace("status: Not yet recruiting", f"status: {status}"))
    assert list(enrolling_trials(tmp_path)) == ["TEST-0003"]
    assert sorted(load_trials(tmp_path, only=["TEST-0002", "TEST-0003"])) == ["TEST-0002", "TEST-0003"]


def test_applies_to_may_list_several_groups(tmp_path):
    # NCT01325207's contraception item: women aged 55 or younger, and men; not women over 55.
    import datetime as dt

    from cds_service.engine import Result, evaluate
    from fhirbuild import patient

    trial = _with_criterion(tmp_path, """\
        - id: contraception
          kind: exclusion
          title: Willing to use effective contraception
          protocolText: "Women of childbearing potential and sexually active males must commit to contraception."
          interpretation: Review for women aged 55 or younger and for men; not applicable to women over 55.
          appliesTo: [{sex: female, maxAge: 55}, {sex: male}]
          rule: {type: review, prompt: "confirm contraception"}
    """)
    as_of = dt.date(2026, 6, 15)

    def result(birth_date, gender):
        evaluation = evaluate(trial, [patient(birth_date, gender)], as_of)
        return next(c for c in evaluation.criteria if c.id == "contraception")

    assert result("1980-01-01", "female").result is Result.REVIEW
    assert result("1950-01-01", "male").result is Result.REVIEW
    assert result("1990-01-01", None).result is Result.REVIEW  # sex unknown: applies
    older = result("1960-01-01", "female")
    assert older.result is Result.NOT_APPLICABLE and older.reason == "applies up to age 55; patient is 66"


def _with_criterion(tmp_path, criterion: str):
    """TEST-0003 with one more criterion (YAML, as under `criteria:`)."""
    from cds_service.trials import load_trial

    path = tmp_path / "trial.yaml"
    path.write_text((HERE / "trials" / "TEST-0003.yaml").read_text()
                    + textwrap.indent(textwrap.dedent(criterion), "  "))
    return load_trial(path)


def test_a_diagnosis_to_review_only(tmp_path):
    # NCT01325207: brain metastases are allowed "as long as they do not require active treatment
    # or have been treated": a current one is for a clinician to review, a resolved one is not current.
    import datetime as dt

    from cds_service.engine import Result, evaluate
    from fhirbuild import ICD10CM as ICD10, PATIENT_REF, SNOMED, concept, patient

    trial = _with_criterion(tmp_path, """\
        - id: brain-metastases
          kind: inclusion
          title: Brain metastases treated or not requiring treatment
          protocolText: "Patients can have concomitant brain metastases as long as they do not require active treatment or have been treated."
          interpretation: A current brain metastasis gives review; none passes.
          rule:
            type: condition-absent
            label: brain metastasis
            reviewCodes: [brain-metastasis]
            reviewPrompt: confirm treated, or not requiring active treatment
    """)

    def result(*codings, status="active"):
        condition = {"resourceType": "Condition", "id": "c1", "subject": PATIENT_REF, "code": concept(*codings),
                     "clinicalStatus": concept(("http://terminology.hl7.org/CodeSystem/condition-clinical", status))}
        evaluation = evaluate(trial, [patient(), condition], dt.date(2026, 6, 15))
        return next(c for c in evaluation.criteria if c.id == "brain-metastases")

    current = result((ICD10, "C79.31"))
    assert current.result is Result.REVIEW
    assert current.reason.endswith("recorded: confirm treated, or not requiring active treatment")
    assert result(("http://hospital.example.org/dx", "BM1"), (SNOMED, "94225005")).result is Result.REVIEW
    assert result((ICD10, "C79.31"), status="resolved").result is Result.PASS
    assert result((ICD10, "C79.32")).result is Result.PASS  # leptomeningeal, not brain
    assert evaluate(trial, [patient()], dt.date(2026, 6, 15)).criteria[-1].result is Result.PASS


def test_condition_absent_needs_something_to_find(tmp_path):
    with pytest.raises(Exception, match="give failCodes, reviewCodes or both"):
        _with_criterion(tmp_path, """\
            - id: nothing
              kind: exclusion
              title: Nothing
              protocolText: "x"
              interpretation: x
              rule: {type: condition-absent, label: nothing}
        """)
