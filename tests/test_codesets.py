"""The shipped code sets: every set says where its codes come from, the codes are
well-formed, sampled descendants of the intensional sets are present, negative and
look-alike findings are absent, and no code sits in two sets whose meanings contradict."""

from __future__ import annotations

import re
import textwrap

import pytest
import yaml

from cds_service.engine.codes import ICD10CM, LOINC, RXNORM, SNOMED, coding_key
from cds_service.trials.loader import CODESETS_DIR, DefinitionError, load_codesets

V2_0487 = "http://terminology.hl7.org/CodeSystem/v2-0487"


@pytest.fixture(scope="module")
def sets():
    return load_codesets()


@pytest.fixture(scope="module")
def raw():
    """The code-set files as written (not through the loader), by set name."""
    out = {}
    for path in sorted(CODESETS_DIR.glob("*.yaml")):
        for name, body in yaml.safe_load(path.read_text(encoding="utf-8"))["codesets"].items():
            out[name] = (path.name, body)
    return out


def has(sets, name, system, code):
    return sets[name].contains(coding_key(system, code))


# ---------------------------------------------------------------- provenance


def test_every_shipped_set_states_its_source_version_and_method(raw, sets):
    assert raw, "no code sets found"
    for name, (file, body) in raw.items():
        prov = body.get("provenance")
        assert isinstance(prov, dict), f"{file}: {name} has no provenance"
        for field in ("source", "version", "method"):
            assert str(prov.get(field, "")).strip(), f"{file}: {name} provenance.{field} is empty"
        assert sets[name].provenance is not None and sets[name].provenance.source == prov["source"]


def test_a_set_without_provenance_fails_to_load_naming_file_and_set(tmp_path):
    (tmp_path / "mine.yaml").write_text(textwrap.dedent("""\
        codesets:
          sourced:
            title: t
            provenance: {source: s, version: v, method: m}
            codes:
              - {system: "http://loinc.org", code: "718-7", display: d, source: s}
          unsourced:
            title: t
            codes:
              - {system: "http://loinc.org", code: "718-7", display: d, source: s}
        """), encoding="utf-8")
    with pytest.raises(DefinitionError, match=r"mine\.yaml: codesets\.unsourced\.provenance: Field required") as err:
        load_codesets(tmp_path)
    assert "sourced.provenance" not in str(err.value).replace("unsourced.provenance", "")


def test_a_provenance_with_an_empty_field_fails_to_load(tmp_path):
    (tmp_path / "mine.yaml").write_text(textwrap.dedent("""\
        codesets:
          vague:
            title: t
            provenance: {source: s, version: "", method: m}
            codes:
              - {system: "http://loinc.org", code: "718-7", display: d, source: s}
        """), encoding="utf-8")
    with pytest.raises(DefinitionError, match=r"mine\.yaml: codesets\.vague\.provenance\.version"):
        load_codesets(tmp_path)


def test_every_code_entry_has_a_display_and_a_source(raw):
    for name, (file, body) in raw.items():
        for i, entry in enumerate(body["codes"]):
            for field in ("system", "display", "source"):
                assert str(entry.get(field, "")).strip(), f"{file}: {name}.codes[{i}] has no {field}"


def test_no_set_lists_a_code_twice(sets):
    for name, cs in sets.items():
        keys = [(e.system, e.code, e.prefix) for e in cs.entries]
        dupes = {k for k in keys if keys.count(k) > 1}
        assert not dupes, f"{name}: {sorted(dupes)[:3]}"


# ---------------------------------------------------------------- well-formed codes

_VERHOEFF_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
               [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
               [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
               [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VERHOEFF_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
               [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
               [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def _verhoeff_ok(digits: str) -> bool:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][int(ch)]]
    return c == 0


def _loinc_ok(code: str) -> bool:
    """LOINC's mod-10 check digit on term codes; answer codes (LA...) only by their form
    (their check digit is not the term codes' mod 10)."""
    if re.fullmatch(r"LA[0-9]{1,6}-[0-9]", code):
        return True
    body, _, check = code.partition("-")
    if not body.isdigit() or not check.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d // 10 + d % 10
    return (10 - total % 10) % 10 == int(check)


def test_verhoeff_and_loinc_checks_catch_a_typo():
    assert _verhoeff_ok("254838004") and not _verhoeff_ok("254838005") and not _verhoeff_ok("254883004")
    assert _loinc_ok("718-7") and _loinc_ok("1975-2") and not _loinc_ok("718-6") and not _loinc_ok("1957-2")


def test_every_code_is_well_formed_for_its_system(sets):
    bad = []
    for name, cs in sets.items():
        for e in cs.entries:
            code = e.code or ""
            if e.prefix is not None:
                form = _PREFIX_FORMS.get(e.system)
                ok = form is not None and re.fullmatch(form, e.prefix)
            elif e.system == SNOMED:
                # concept ids: a Verhoeff check digit, partition 00 (core) or 10 (extension)
                ok = code.isdigit() and 6 <= len(code) <= 18 and _verhoeff_ok(code) and code[-3:-1] in ("00", "10")
            elif e.system == LOINC:
                ok = _loinc_ok(code)
            elif e.system == ICD10CM:
                ok = re.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?", code)
            elif e.system == RXNORM:
                ok = code.isdigit()
            else:
                ok = bool(code.strip())
            if not ok:
                bad.append((name, e.system, e.code or e.prefix))
    assert not bad, bad[:10]


# A prefix match means "every code under this category": it only makes sense for systems whose
# codes are built character by character (ICD-10-CM categories, ICD-10-PCS sections) or numbered
# in ranges that a leading part names (CPT 774xx, HCPCS G600x); never for SNOMED CT, LOINC or RxNorm.
_PREFIX_FORMS = {
    ICD10CM: r"[A-Z][0-9]([0-9A-Z](\.?[0-9A-Z]{0,4})?)?",
    "http://www.cms.gov/Medicare/Coding/ICD10": r"[0-9A-HJ-NP-Z]{1,6}",  # ICD-10-PCS: no I or O
    "http://www.ama-assn.org/go/cpt": r"[0-9]{3,4}",
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": r"[A-V][0-9]{2,3}",
}


def test_prefix_entries_are_in_hierarchical_or_ranged_systems_only(sets):
    for name, cs in sets.items():
        assert all(e.system in _PREFIX_FORMS for e in cs.entries if e.prefix is not None), name


def test_intension_roots_are_members_of_their_own_sets(sets):
    """descendantsOf is '<<' (descendant or self): the root itself must be in the shipped set."""
    for name, cs in sets.items():
        for system, root in cs.intension:
            assert cs.contains((system, root)), f"{name}: intension root {root} is not in the set"


# ---------------------------------------------------------------- sampled members


@pytest.mark.parametrize("name,system,code", [
    ("breast-cancer", SNOMED, "254837009"),        # the root, Malignant neoplasm of breast
    ("breast-cancer", SNOMED, "254838004"),        # Carcinoma of breast
    ("breast-cancer", SNOMED, "278054005"),        # Lobular carcinoma of breast
    ("breast-cancer", SNOMED, "1080261000119100"), # Infiltrating lobular carcinoma of left female breast
    ("breast-cancer", SNOMED, "408643008"),        # Infiltrating duct carcinoma of breast
    ("breast-cancer", SNOMED, "448952004"),        # Infiltrating duct carcinoma of female breast
    ("breast-cancer", SNOMED, "254840009"),        # Inflammatory carcinoma of breast
    ("breast-cancer", SNOMED, "403946000"),        # Paget's disease of nipple
    ("breast-cancer", SNOMED, "431396003"),        # HER2-negative carcinoma of breast (kept)
    ("breast-cancer", SNOMED, "427685000"),        # HER2-positive carcinoma of breast (kept)
    ("breast-cancer", SNOMED, "706970001"),        # Triple negative malignant neoplasm of breast
    ("breast-cancer", SNOMED, "1306293004"),       # Primary carcinoma of breast (a 2025 concept)
    ("breast-cancer", SNOMED, "1306565004"),       # Lobular carcinoma of left breast (a 2025 concept)
    ("breast-cancer", ICD10CM, "C50.911"),
    ("breast-cancer", ICD10CM, "C50912"),          # undotted
    ("breast-cancer-history", ICD10CM, "Z85.3"),
    ("breast-cancer-history", SNOMED, "429087003"),
    ("leptomeningeal-metastasis", SNOMED, "1155991005"),
    ("leptomeningeal-metastasis", ICD10CM, "C79.32"),
    ("cns-metastasis-nonspecific", ICD10CM, "C79.49"),
    ("secondary-malignant-neoplasm", SNOMED, "128462008"),
    ("secondary-malignant-neoplasm", SNOMED, "94225005"),   # Metastatic malignant neoplasm to brain
    ("secondary-malignant-neoplasm", SNOMED, "1290700004"), # Metastatic lobular carcinoma (a 2025 concept)
    ("secondary-malignant-neoplasm", ICD10CM, "C79.89"),
    ("secondary-malignant-neoplasm", ICD10CM, "C7B.00"),
    ("meninges-body-site", SNOMED, "1231004"),
    ("meninges-body-site", SNOMED, "8935007"),
    ("csf-specimen", SNOMED, "258450006"),
    ("csf-specimen", V2_0487, "CSF"),
    ("hiv", SNOMED, "86406008"),
    ("hiv", SNOMED, "165816005"),                  # HIV detected / positive, as on problem lists
    ("hiv", SNOMED, "62479008"),                   # AIDS
    ("hiv", SNOMED, "432218001"),                  # History of asymptomatic HIV infection
    ("hiv", ICD10CM, "B20"),
    ("hiv", ICD10CM, "Z21"),
    ("hiv", ICD10CM, "O98.711"),
    ("primary-immunodeficiency", SNOMED, "31323000"),   # Severe combined immunodeficiency disease
    ("primary-immunodeficiency", ICD10CM, "D83.9"),
    ("other-immunodeficiency", ICD10CM, "D84.821"),
    ("pregnancy-diagnosis", SNOMED, "77386006"),
    ("pregnancy-diagnosis", SNOMED, "65147003"),   # Twin pregnancy
    ("pregnancy-diagnosis", ICD10CM, "Z34.83"),
    ("pregnancy-diagnosis", ICD10CM, "Z3A.20"),
    ("breastfeeding-diagnosis", SNOMED, "866041003"),   # Mother currently breastfeeding
    ("breastfeeding-diagnosis", ICD10CM, "O91.13"),     # Abscess of breast associated with lactation
    ("hcg-qualitative", LOINC, "80384-1"),
    ("study-drugs", RXNORM, "68446"),              # pemetrexed IN
    ("study-drugs", RXNORM, "323879"),             # Alimta BN
    ("study-drugs", RXNORM, "1728072"),            # pemetrexed 500 MG Injection
    ("study-drugs", RXNORM, "2360535"),            # Trodelvy BN
    ("study-drug-related", RXNORM, "51499"),       # irinotecan IN
    ("study-drug-related", RXNORM, "203652"),      # Camptosar BN
])
def test_sampled_member_is_present(sets, name, system, code):
    assert has(sets, name, system, code)


# ---------------------------------------------------------------- look-alikes absent


@pytest.mark.parametrize("name,system,code,why", [
    ("hiv", SNOMED, "165815009", "HIV negative (finding)"),
    ("hiv", ICD10CM, "Z20.6", "exposure to HIV"),
    ("hiv", ICD10CM, "Z11.4", "screening for HIV"),
    ("breast-cancer", ICD10CM, "C79.81", "secondary neoplasm of breast"),
    ("breast-cancer", SNOMED, "94297009", "metastatic malignant neoplasm to female breast"),
    ("breast-cancer", SNOMED, "94012007", "primary malignant neoplasm of skin of breast"),
    ("breast-cancer", SNOMED, "278052009", "malignant lymphoma of breast"),
    ("breast-cancer", SNOMED, "269497004", "neoplasm of uncertain behavior of breast"),
    ("breast-cancer", SNOMED, "1306543004", "metastatic malignant neoplasm to central portion of breast (2025)"),
    ("breast-cancer", SNOMED, "1306374003", "neoplasm of uncertain behavior of axillary tail of breast (2025)"),
    ("pregnancy-diagnosis", SNOMED, "34801009", "ectopic pregnancy: an older VSAC version only, left out"),
    ("breast-cancer", SNOMED, "718220008", "hereditary breast and ovarian cancer syndrome"),
    ("breast-cancer", SNOMED, "429087003", "history of (its own set)"),
    ("breast-cancer-history", SNOMED, "429740004", "family history of malignant neoplasm of breast"),
    ("breast-cancer-history", SNOMED, "700146008", "no history of malignant tumor of breast"),
    ("breast-cancer-history", ICD10CM, "Z80.3", "family history of malignant neoplasm of breast"),
    ("leptomeningeal-metastasis", ICD10CM, "C79.49", "nonspecific nervous-system metastasis"),
    ("leptomeningeal-metastasis", ICD10CM, "C70.0", "primary meningeal tumour"),
    ("leptomeningeal-metastasis", SNOMED, "94225005", "brain metastasis"),
    ("cns-metastasis-nonspecific", ICD10CM, "C79.31", "brain metastasis"),
    ("secondary-malignant-neoplasm", ICD10CM, "C70.0", "primary malignant neoplasm of meninges"),
    ("secondary-malignant-neoplasm", ICD10CM, "C76.0", "primary malignant neoplasm of head, face and neck"),
    ("pregnancy-diagnosis", SNOMED, "60001007", "not pregnant"),
    ("pregnancy-diagnosis", ICD10CM, "O80", "delivery encounter"),
    ("pregnancy-diagnosis", ICD10CM, "O91.03", "lactation, not pregnancy"),
    ("breastfeeding-diagnosis", SNOMED, "169643005", "feeding intention - breast"),
    ("breastfeeding-diagnosis", ICD10CM, "O92.5", "suppressed lactation"),
    ("breastfeeding-diagnosis", ICD10CM, "O91.011", "associated with pregnancy, not lactation"),
    ("primary-immunodeficiency", ICD10CM, "D81.810", "biotinidase deficiency (metabolic)"),
    ("primary-immunodeficiency", ICD10CM, "D84.821", "drug-induced immunodeficiency (review, not fail)"),
    ("hcg-quantitative", LOINC, "2106-3", "qualitative urine hCG"),
])
def test_look_alike_is_absent(sets, name, system, code, why):
    assert not has(sets, name, system, code), why


def _overlap(a, b):
    """Codes one set lists exactly that the other holds (exactly or by prefix), both ways,
    and prefixes of one that fall under a prefix of the other."""
    both = {k for k in a.exact if b.contains(k)} | {k for k in b.exact if a.contains(k)}
    both |= {(s, p) for s, p in a.prefixes for s2, q in b.prefixes if s == s2 and (p.startswith(q) or q.startswith(p))}
    return both


@pytest.mark.parametrize("a,b", [
    ("breast-cancer", "breast-cancer-history"),
    ("breast-cancer", "breast-cancer-not-primary"),
    ("breast-cancer-history", "breast-cancer-not-primary"),
    ("breast-cancer", "malignant-neoplasm-nonspecific"),
    ("leptomeningeal-metastasis", "cns-metastasis-nonspecific"),
    ("leptomeningeal-metastasis", "meningeal-not-metastasis"),
    ("cns-metastasis-nonspecific", "meningeal-not-metastasis"),
    ("hiv", "hiv-not-infection"),
    ("hiv", "primary-immunodeficiency"),
    ("primary-immunodeficiency", "other-immunodeficiency"),
    ("pregnancy-diagnosis", "pregnancy-status-not-pregnant"),
    ("pregnancy-diagnosis", "breastfeeding-diagnosis"),
    ("pregnancy-status-pregnant", "pregnancy-status-not-pregnant"),
    ("breastfeeding-yes", "breastfeeding-no"),
    ("her2-negative-breast-carcinoma", "her2-positive-breast-carcinoma"),
    ("her2-ihc-score-negative", "her2-ihc-score-positive"),
    ("her2-ihc-score-negative", "her2-ihc-score-equivocal"),
    ("her2-ihc-score-equivocal", "her2-ihc-score-positive"),
    ("result-negative", "result-positive"),
    ("result-negative", "result-equivocal"),
    ("result-positive", "result-equivocal"),
    ("hcg-qualitative", "hcg-quantitative"),
    ("study-drugs", "study-drug-related"),
    ("no-known-drug-allergy", "allergy-entries-not-about-drugs"),
])
def test_no_code_sits_in_two_sets_whose_meanings_contradict(sets, a, b):
    assert not _overlap(sets[a], sets[b])


def test_the_overlap_check_sees_exact_and_prefix_overlaps(sets):
    assert _overlap(sets["breast-cancer"], sets["breast-cancer"])
    assert _overlap(sets["secondary-malignant-neoplasm"], sets["leptomeningeal-metastasis"])  # C79.32 under C79


# ---------------------------------------------------------------- breast codes known not to be the primary


def test_breast_codes_left_out_of_breast_cancer_are_held_as_not_the_primary(sets):
    """SNOMED CT codes under 254837009 that breast-cancer leaves out on purpose are held in
    breast-cancer-not-primary (so a terminology server never adds them to breast-cancer);
    no code is in both sets; metastasis FROM the breast is in neither (the safety net)."""
    assert not _overlap(sets["breast-cancer"], sets["breast-cancer-not-primary"])
    for code in ("94297009",    # Metastatic malignant neoplasm to female breast (VSAC Cancer)
                 "278052009"):  # Malignant lymphoma of breast (VSAC Cancer)
        assert has(sets, "breast-cancer-not-primary", SNOMED, code), code
        assert not has(sets, "breast-cancer", SNOMED, code), code
    # in situ / uncertain behaviour: neither the primary nor ruled out (nonspecific: unknown)
    assert has(sets, "breast-neoplasm-uncertain", SNOMED, "278053004")  # Intraductal carcinoma of breast
    assert has(sets, "breast-neoplasm-uncertain", ICD10CM, "D05.11")
    assert not _overlap(sets["breast-neoplasm-uncertain"], sets["breast-cancer-not-primary"])
    assert not _overlap(sets["breast-neoplasm-uncertain"], sets["breast-cancer"])
    assert has(sets, "breast-cancer-not-primary", ICD10CM, "C79.81")  # the ICD-10-CM entries stay
    assert not has(sets, "breast-cancer-not-primary", SNOMED, "315004001")  # metastasis from breast
    assert not has(sets, "breast-cancer", SNOMED, "315004001")


def test_a_known_secondary_of_the_breast_fails_but_metastasis_from_the_breast_stays_unknown(nct06462092):
    import datetime as dt

    from cds_service.engine import Result, evaluate

    def breast(code: str, display: str):
        condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                     "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                    "code": "active"}]},
                     "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]}}
        patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"}
        return evaluate(nct06462092, [patient, condition], dt.date(2026, 6, 15)).criterion("breast-cancer").result

    assert breast("94297009", "Metastatic malignant neoplasm to female breast (disorder)") is Result.FAIL
    assert breast("278053004", "Intraductal carcinoma of breast (disorder)") is Result.UNKNOWN  # nonspecific
    assert breast("315004001", "Metastasis from malignant tumor of breast (disorder)") is Result.UNKNOWN


# ---------------------------------------------------------------- meninges body sites


def test_leptomeningeal_body_sites_are_meninges_but_the_dura_mater_is_not(sets):
    """The arachnoid, pia mater and subarachnoid space (eHDSI Body Site, DICOM CID 7153, PH
    Road Safety body sites) make a secondary malignant neoplasm leptomeningeal; the dura
    mater (a dural metastasis) does not."""
    for code in ("75042008",    # Arachnoid structure
                 "23180006",    # Pia mater structure
                 "35951006",    # Subarachnoid space structure
                 "75559006"):   # Spinal cord meninges structure
        assert has(sets, "meninges-body-site", SNOMED, code), code
    for code in ("18545000",    # Dura mater structure
                 "37554007",    # Spinal dura mater structure
                 "7851002"):    # Intracranial subdural space
        assert not has(sets, "meninges-body-site", SNOMED, code), code
