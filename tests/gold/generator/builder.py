"""The building blocks of the NCT01325207 gold patients: a baseline record, helpers that change it,
and the case registry (cases.py holds the cases; generate.py writes the files)."""
import copy
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "nct01325207"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
LAB = "http://ehr.example.org/fhir/CodeSystem/lab-test-codes"
FORMULARY = "urn:oid:1.2.840.114350.1.13.0.1.7.2.698288"  # an Epic-style local medication id
LOCALDX = "urn:oid:1.2.840.114350.1.13.0.1.7.2.728286"  # an Epic-style local diagnosis id
CPT = "http://www.ama-assn.org/go/cpt"
BASE = "http://ehr.example.org/fhir"


def cc(*codings, text=None):
    out = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]}
    if text:
        out["text"] = text
    return out


def status_cc(system, code):
    return {"coding": [{"system": f"http://terminology.hl7.org/CodeSystem/{system}", "code": code}]}


class P:
    def __init__(self, pid, gender="female", birth="1976-04-10", birthsex="F"):
        self.pid = pid
        self.n = 0
        self.res = {}  # key -> resource (None: removed)
        pat = {"resourceType": "Patient", "id": pid,
               "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
               "identifier": [{"use": "usual", "system": "http://ehr.example.org/fhir/sid/mrn",
                               "value": f"MRN-9{pid[1:]}00"}],
               "active": True, "name": [{"use": "official", "family": "Gold", "given": [pid.upper()]}],
               "gender": gender, "birthDate": birth}
        if birthsex:
            pat["extension"] = [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                                 "valueCode": birthsex}]
        self.res["patient"] = pat

    def rid(self, tag):
        return f"{self.pid}-{tag}"

    @property
    def subject(self):
        return {"reference": f"Patient/{self.pid}"}

    def condition(self, key, code, text, *, clinical="active", verification="confirmed", onset="2022-08-30",
                  abatement=None, category="problem-list-item"):
        r = {"resourceType": "Condition", "id": self.rid(key)}
        if clinical:
            r["clinicalStatus"] = status_cc("condition-clinical", clinical)
        if verification:
            r["verificationStatus"] = status_cc("condition-ver-status", verification)
        r["category"] = [status_cc("condition-category", category)]
        r["code"] = dict(code, text=text)
        r["subject"] = self.subject
        if onset:
            r["onsetDateTime"] = onset
        if abatement:
            r["abatementDateTime"] = abatement
        r["recordedDate"] = (onset or "2026-05-27") + ("T10:15:00-05:00" if len(onset or "x" * 10) == 10 else "")
        self.res[key] = r
        return r

    def obs(self, key, code, text, when, **value):
        r = {"resourceType": "Observation", "id": self.rid(key), "status": value.pop("status", "final"),
             "category": [status_cc("observation-category", value.pop("category", "laboratory"))],
             "code": dict(code, text=text), "subject": self.subject}
        if when:
            r["effectiveDateTime"] = when
            r["issued"] = when if "T" in when else when + "T12:00:00-05:00"
        r.update(value)
        self.res[key] = r
        return r

    def lab(self, key, loinc, local, text, value, unit, *, low=None, high=None, when="2026-06-08T08:45:00-05:00",
            ucum=True):
        q = {"value": value, "unit": unit}
        if ucum:
            q.update(system=UCUM, code=unit)
        extra = {"valueQuantity": q}
        if high is not None:
            rr = {"high": dict(q, value=high)}
            if low is not None:
                rr["low"] = dict(q, value=low)
            rr["type"] = status_cc("referencerange-meaning", "normal")
            extra["referenceRange"] = [rr]
        return self.obs(key, cc((LOINC, loinc[0], loinc[1]), (LAB, local, text)), text, when, **extra)

    def drop(self, *keys):
        for k in keys:
            self.res.pop(k, None)

    def bundle(self):
        entries = []
        for r in self.res.values():
            entries.append({"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r})
        return {"resourceType": "Bundle", "id": f"{self.pid}-bundle", "type": "collection",
                "timestamp": "2026-06-15T06:00:00-05:00", "entry": entries}


# -- the baseline: HER2-positive (IHC 3+) breast cancer with LM, every computable criterion passes ----------

LABS = {  # key: (loinc, display), local, text, value, unit, low, high
    "wbc": (("6690-2", "Leukocytes [#/volume] in Blood by Automated count"), "WBC", "WBC", 6.1, "10*3/uL", 4.0, 11.0),
    "hb": (("718-7", "Hemoglobin [Mass/volume] in Blood"), "HGB", "Hemoglobin", 12.4, "g/dL", 12.0, 15.5),
    "plt": (("777-3", "Platelets [#/volume] in Blood by Automated count"), "PLT", "Platelets", 230, "10*3/uL", 150, 400),
    "anc": (("751-8", "Neutrophils [#/volume] in Blood by Automated count"), "NEUTABS", "Absolute neutrophil count",
            3.4, "10*3/uL", 1.8, 7.7),
    "tbil": (("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma"), "TBIL", "Total bilirubin", 0.6, "mg/dL",
             0.2, 1.2),
    "alt": (("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma"), "ALT", "ALT",
            24, "U/L", 7, 55),
    "ast": (("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma"), "AST", "AST",
            28, "U/L", 8, 48),
    "crea": (("2160-0", "Creatinine [Mass/volume] in Serum or Plasma"), "CREA", "Creatinine", 0.8, "mg/dL", 0.59, 1.04),
}

BREAST = cc((SCT, "353431000119107", "Primary malignant neoplasm of female left breast (disorder)"),
            (ICD, "C50.912", "Malignant neoplasm of unspecified site of left female breast"))
LM = cc((SCT, "1155991005", "Secondary malignant neoplasm of leptomeninges (disorder)"),
        (ICD, "C79.32", "Secondary malignant neoplasm of cerebral meninges"))
HER2_IHC = cc((LOINC, "85319-2", "HER2 [Presence] in Breast cancer specimen by Immune stain"),
              (LAB, "HER2IHC", "HER2 IHC (HercepTest)"))
HER2_ISH = cc((LOINC, "85318-4", "ERBB2 gene duplication [Presence] in Breast cancer specimen by FISH"),
              (LAB, "HER2FISH", "HER2 FISH (PathVysion)"))
IHC_SCORE = {"0": ("LA6111-4", "0"), "1+": ("LA11841-6", "1+"), "2+": ("LA11842-4", "2+"), "3+": ("LA11843-2", "3+")}


def her2_ihc(p, score, when="2025-11-03", key="her2-ihc"):
    code, disp = IHC_SCORE[score]
    p.obs(key, HER2_IHC, "HER2 by IHC", when, category="laboratory",
          valueCodeableConcept=cc((LOINC, code, disp), text=f"HER2 IHC score {score}"))


def her2_ish(p, positive, when="2025-11-10", key="her2-ish"):
    value = ("LA6576-8", "Positive") if positive else ("LA6577-6", "Negative")
    p.obs(key, HER2_ISH, "HER2 FISH", when,
          valueCodeableConcept=cc((LOINC, value[0], value[1]), text="Amplified" if positive else "Not amplified"))


def kps(p, score, when="2026-06-05T10:20:00-05:00", key="kps", **value):
    value = value or {"valueInteger": score}
    p.obs(key, cc((LOINC, "89243-0", "Karnofsky Performance Status score"), (LAB, "KPS", "Karnofsky")),
          "Karnofsky performance status", when, category="survey", **value)


ECOG = {0: ("LA9622-7", "Fully active"), 1: ("LA9623-5", "Restricted in physically strenuous activity"),
        2: ("LA9624-3", "Ambulatory and capable of all self care"), 3: ("LA9625-0", "Capable of only limited self care")}


def ecog(p, score, when="2026-06-05T10:20:00-05:00", coded=True):
    value = {"valueCodeableConcept": cc((LOINC, ECOG[score][0], ECOG[score][1]), text=f"ECOG {score}")} if coded \
        else {"valueInteger": score}
    p.obs("ecog", cc((LOINC, "89247-1", "ECOG Performance Status score")), "ECOG performance status", when,
          category="survey", **value)


def lvef(p, value, unit="%", when="2026-04-20T13:05:00-05:00", loinc=("10230-1", "Left ventricular Ejection fraction")):
    q = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    p.obs("lvef", cc((LOINC, *loinc), ("urn:oid:1.2.840.114350.1.13.0.1.7.2.768282", "ECHOLVEF", "LVEF (echo)")),
          "LV ejection fraction", when, category="imaging", valueQuantity=q)


def nkda(p):
    p.res["allergy"] = {
        "resourceType": "AllergyIntolerance", "id": p.rid("alg"),
        "clinicalStatus": status_cc("allergyintolerance-clinical", "active"),
        "verificationStatus": status_cc("allergyintolerance-verification", "confirmed"),
        "code": cc((SCT, "409137002", "No known drug allergy (situation)"), text="NKDA"),
        "patient": {"reference": f"Patient/{p.pid}"}, "recordedDate": "2022-09-02"}


def base(pid, **kw):
    p = P(pid, **kw)
    p.condition("bc", BREAST, "Invasive ductal carcinoma, left breast")
    p.condition("lm", LM, "Leptomeningeal metastases", onset="2026-05-26")
    her2_ihc(p, "3+")
    for key, (loinc, local, text, value, unit, low, high) in LABS.items():
        p.lab(key, loinc, local, text, value, unit, low=low, high=high)
    p.obs("hcg", cc((LOINC, "21198-7", "Choriogonadotropin.beta subunit [Units/volume] in Serum or Plasma"),
                    (LAB, "HCGQNT", "hCG, beta, quantitative, serum")), "Serum hCG, quantitative",
          "2026-06-10T07:55:00-05:00",
          valueQuantity={"value": 1.2, "unit": "IU/L", "system": UCUM, "code": "[IU]/L"})
    kps(p, 80)
    lvef(p, 60)
    nkda(p)
    p.res["dr-cbc"] = {
        "resourceType": "DiagnosticReport", "id": p.rid("dr-cbc"), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
        "code": cc((LOINC, "57021-8", "CBC W Auto Differential panel - Blood"), text="CBC with differential"),
        "subject": p.subject, "effectiveDateTime": "2026-06-08T08:45:00-05:00", "issued": "2026-06-08T11:20:31-05:00",
        "result": [{"reference": f"Observation/{p.rid(k)}"} for k in ("wbc", "hb", "plt", "anc")]}
    return p


def set_lab(p, key, value, unit=None, *, high="keep", ucum=True, low="keep"):
    loinc, local, text, v0, u0, l0, h0 = LABS[key]
    unit = unit or u0
    p.lab(key, loinc, local, text, value, unit, low=l0 if low == "keep" else low, high=h0 if high == "keep" else high,
          ucum=ucum)


def procedure(p, key, code, text, *, status="completed", period=None, when=None, category=True):
    r = {"resourceType": "Procedure", "id": p.rid(key), "status": status}
    if category:
        r["category"] = cc((SCT, "108290001", "Radiation oncology AND/OR radiotherapy (procedure)"))
    r["code"] = dict(code, text=text)
    r["subject"] = p.subject
    if period:
        r["performedPeriod"] = period
    if when:
        r["performedDateTime"] = when
    p.res[key] = r


RT = cc((SCT, "1287742003", "Radiotherapy (procedure)"), ("urn:oid:1.2.840.114350.1.13.0.1.7.2.696580", "RAD1042",
                                                           "WBRT 30 Gy/10 fx"))
CAPE = (RX, "200328", "capecitabine 500 MG Oral Tablet")
TRAS = (RX, "224905", "trastuzumab")


def med_request(p, key, *, status="active", concept=None, reference=None, authored="2026-05-20"):
    r = {"resourceType": "MedicationRequest", "id": p.rid(key), "status": status, "intent": "order"}
    if concept:
        r["medicationCodeableConcept"] = concept
    if reference:
        r["medicationReference"] = reference
    r.update(subject=p.subject, authoredOn=authored)
    p.res[key] = r


def medication(p, key, concept, **extra):
    r = {"resourceType": "Medication", "id": p.rid(key), "code": concept}
    r.update(extra)
    p.res[key] = r
    return r


BASELINE = {
    "alive": "pass", "breast-cancer": "pass", "her2-positive": "pass", "leptomeningeal-metastases": "pass",
    "brain-metastases": "pass", "life-expectancy": "review", "performance-status": "pass", "age": "pass",
    "ommaya-reservoir": "review", "neutrophils": "pass", "platelets": "pass", "hemoglobin": "pass", "wbc": "pass",
    "creatinine": "pass", "bilirubin": "pass", "transaminases": "pass", "lvef": "pass",
    "radiotherapy-recency": "pass", "cns-chemotherapy": "pass", "other-cancer": "pass", "significant-illness": "review",
    "pregnancy-breastfeeding": "pass", "contraception": "review", "trastuzumab-hypersensitivity": "pass",
}
CASES = []


def case(slug, description, expect=None, reasons=None, orders=None, pending=None, prefetch_only=None):
    def register(fn):
        CASES.append((slug, description, fn, expect or {}, reasons or {}, orders or {}, pending, prefetch_only))
        return fn
    return register
