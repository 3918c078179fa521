"""The NCT01325207 gold cases: each a change to the baseline record, its description and the
expected results, written from the reading (not from running the engine)."""
from builder import *  # noqa


@case("baseline-eligible", "Baseline: woman aged 50, left breast cancer (SNOMED+C50.912), active LM (1155991005/C79.32), "
      "HER2 IHC 3+ (2025-11-03), CBC and CMP of 2026-06-08 with ranges, KPS 80 (2026-06-05), LVEF 60 % (2026-04-20), "
      "negative serum hCG, NKDA, no radiotherapy, no medications -> every computable criterion passes; life expectancy, "
      "Ommaya, significant illness and contraception are review")
def _(p):
    pass


@case("kps-50", "KPS 50 (valueInteger) -> 'KPS > 50' read as >= 60: 50 fails", {"performance-status": "fail"})
def _(p):
    kps(p, 50)


@case("kps-60", "KPS 60 sent as a unitless valueQuantity (an interface's shape) -> 60 passes")
def _(p):
    kps(p, 60, valueQuantity={"value": 60})


@case("ecog-1-only", "No KPS; ECOG 1 (LOINC 89247-1, answer LA9623-5) -> 0-1 passes")
def _(p):
    p.drop("kps")
    ecog(p, 1)


@case("ecog-2-only", "No KPS; ECOG 2 as valueInteger -> ECOG 2 spans KPS 50-70: unknown (equivocal), no order",
      {"performance-status": "unknown"}, {"performance-status": "equivocal"})
def _(p):
    p.drop("kps")
    ecog(p, 2, coded=False)


@case("ecog-3-only", "No KPS; ECOG 3 (LA9625-0) -> 3-5 fails", {"performance-status": "fail"})
def _(p):
    p.drop("kps")
    ecog(p, 3)


@case("kps-stale", "Only KPS 90 of 2026-04-30 (46 days before) -> older than 30 days: unknown (stale), no order",
      {"performance-status": "unknown"}, {"performance-status": "stale"})
def _(p):
    kps(p, 90, when="2026-04-30T09:00:00-05:00")


@case("kps-string", "KPS sent as valueString \"80%\" (the only score) -> a string is not read: unknown "
      "(uninterpretable-value)", {"performance-status": "unknown"}, {"performance-status": "uninterpretable-value"})
def _(p):
    kps(p, None, valueString="80%")


@case("lvef-50-percent", "LVEF 50 % (UCUM %) -> <= 50 % fails", {"lvef": "fail"})
def _(p):
    lvef(p, 50)


@case("lvef-0-50-fraction", "LVEF 0.50 in UCUM {1}-style unit '1' (a fraction) -> converted to 50 %: fails",
      {"lvef": "fail"})
def _(p):
    lvef(p, 0.50, unit="1")


@case("lvef-0-50-annotated-unity", "LVEF 0.50 under the UCUM unit '{1}' (an annotation alone is unity in UCUM, "
      "the same as '1') -> a fraction: 50 %, fails", {"lvef": "fail"})
def _(p):
    lvef(p, 0.50, unit="{1}")


@case("lvef-51-percent", "LVEF 51 % under the echo-specific LOINC 18043-0 -> passes")
def _(p):
    lvef(p, 51, loinc=("18043-0", "Left ventricular Ejection fraction by US"))


@case("lvef-0-51-fraction", "LVEF 0.51 in UCUM '1' -> 51 %: passes")
def _(p):
    lvef(p, 0.51, unit="1")


@case("lvef-none", "No LVEF recorded -> unknown (no-data), echocardiogram suggested",
      {"lvef": "unknown"}, {"lvef": "no-data"}, {"lvef": "echocardiogram"})
def _(p):
    p.drop("lvef")


@case("lvef-stale", "Only LVEF 62 % of 2026-02-10 (125 days before; look-back 90) -> unknown (stale), echocardiogram",
      {"lvef": "unknown"}, {"lvef": "stale"}, {"lvef": "echocardiogram"})
def _(p):
    lvef(p, 62, when="2026-02-10T11:00:00-06:00")


@case("creatinine-1-5-uln", "Creatinine 1.56 mg/dL with reference high 1.04 (exactly 1.5 x ULN) -> fails",
      {"creatinine": "fail"})
def _(p):
    set_lab(p, "crea", 1.56)


@case("creatinine-under-1-5-uln-no-range", "Creatinine 1.79 mg/dL with no reference range -> fallback ULN 1.2 "
      "(1.5 x = 1.8): passes, the ULN flagged as assumed")
def _(p):
    set_lab(p, "crea", 1.79, high=None)


@case("creatinine-umol-fail", "Creatinine 160 umol/L (UCUM umol/L; range high 92 umol/L) -> 1.74 x ULN: fails",
      {"creatinine": "fail"})
def _(p):
    set_lab(p, "crea", 160, "umol/L", low=52, high=92)


@case("alt-3x-no-liver-met", "ALT 165 U/L, reference high 55 (exactly 3.0 x ULN), no liver metastasis -> fails",
      {"transaminases": "fail"})
def _(p):
    set_lab(p, "alt", 165)


@case("alt-3x-liver-met", "ALT 165 U/L (3.0 x ULN) with a confirmed, active liver-metastasis Condition "
      "(SNOMED 94381002 + ICD-10-CM C78.7) -> limit 5.0 x ULN: passes")
def _(p):
    set_lab(p, "alt", 165)
    p.condition("livermet", cc((SCT, "94381002", "Secondary malignant neoplasm of liver (disorder)"),
                               (ICD, "C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct")),
                "Liver metastases", onset="2026-03-02")


@case("alt-5x-liver-met", "ALT 275 U/L (exactly 5.0 x ULN 55) with a confirmed active liver metastasis coded by "
      "undotted ICD-10-CM C787 beside a local code -> fails", {"transaminases": "fail"})
def _(p):
    set_lab(p, "alt", 275)
    p.condition("livermet", cc((ICD, "C787", "Secondary malignant neoplasm of liver"),
                               (LOCALDX, "1234567", "Metastasis to liver")), "Liver mets", onset="2026-03-02")


@case("ast-3x-liver-met-resolved", "AST 144 U/L (3.0 x ULN 48) with a liver-metastasis Condition resolved -> not "
      "known: the 3.0 x ULN limit applies: fails", {"transaminases": "fail"})
def _(p):
    set_lab(p, "ast", 144)
    p.condition("livermet", cc((SCT, "94381002", "Secondary malignant neoplasm of liver (disorder)")),
                "Liver metastasis", clinical="resolved", onset="2024-01-10", abatement="2025-02-01")


@case("alt-3x-liver-met-provisional", "ALT 200 U/L (3.6 x ULN) with a provisional liver-metastasis Condition -> "
      "between the limits, diagnosis not confirmed: unknown (diagnosis-unconfirmed), no order",
      {"transaminases": "unknown"}, {"transaminases": "diagnosis-unconfirmed"})
def _(p):
    set_lab(p, "alt", 200)
    p.condition("livermet", cc((ICD, "C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct")),
                "Liver lesions, likely metastatic", verification="provisional", onset="2026-06-01")


@case("wbc-3-0", "WBC 3.0 x10^9/L (UCUM 10*9/L) -> <= 3.0 fails", {"wbc": "fail"})
def _(p):
    set_lab(p, "wbc", 3.0, "10*9/L", low=4.0, high=11.0)


@case("wbc-3000-per-ul", "WBC 3,000 /uL (UCUM /uL, no reference range) -> 3.0 x10^9/L: fails", {"wbc": "fail"})
def _(p):
    set_lab(p, "wbc", 3000, "/uL", high=None, low=None)


@case("wbc-3-1", "WBC 3.1 10*3/uL -> passes (just above)")
def _(p):
    set_lab(p, "wbc", 3.1)


@case("anc-1500-per-ul", "ANC 1,500 /uL (UCUM /uL) -> exactly 1.5 x10^9/L fails", {"neutrophils": "fail"})
def _(p):
    set_lab(p, "anc", 1500, "/uL", low=1800, high=7700)


@case("anc-1-6", "ANC 1.6 10*3/uL without a reference range -> passes")
def _(p):
    set_lab(p, "anc", 1.6, high=None, low=None)


@case("platelets-100000-per-ul", "Platelets 100,000 /uL -> exactly 100 x10^9/L fails", {"platelets": "fail"})
def _(p):
    set_lab(p, "plt", 100000, "/uL", low=150000, high=400000)


@case("platelets-101", "Platelets 101 10*3/uL -> passes")
def _(p):
    set_lab(p, "plt", 101)


@case("hb-10", "Haemoglobin 10 g/dL -> <= 10 fails", {"hemoglobin": "fail"})
def _(p):
    set_lab(p, "hb", 10)


@case("hb-string", "Haemoglobin sent as valueString \"11.8\" (the only Hb) -> a string where a number belongs is not "
      "read: unknown (uninterpretable-value), CBC suggested",
      {"hemoglobin": "unknown"}, {"hemoglobin": "uninterpretable-value"}, {"hemoglobin": "cbc-with-differential"})
def _(p):
    r = p.res["hb"]
    r.pop("valueQuantity")
    r["valueString"] = "11.8"


RT_ENDED = "Whole-brain radiotherapy (SNOMED 1287742003 beside a local code)"


@case("rt-ended-13-days", f"{RT_ENDED}, performedPeriod 2026-05-20 .. 2026-06-02 (ended 13 days before) -> fails",
      {"radiotherapy-recency": "fail"})
def _(p):
    procedure(p, "rt", RT, "WBRT", period={"start": "2026-05-20T09:00:00-05:00", "end": "2026-06-02T09:30:00-05:00"})


@case("rt-ended-14-days", "Radiotherapy with performedDateTime 2026-06-01 (14 days before) -> fails",
      {"radiotherapy-recency": "fail"})
def _(p):
    procedure(p, "rt", RT, "WBRT", when="2026-06-01T10:00:00-05:00")


@case("rt-ended-15-days", f"{RT_ENDED}, performedPeriod ending 2026-05-31 (15 days before) -> passes, naming it")
def _(p):
    procedure(p, "rt", RT, "WBRT", period={"start": "2026-05-18", "end": "2026-05-31"})


@case("rt-in-progress-cpt", "Radiotherapy in progress (status in-progress, CPT 77412 delivery, period without end) "
      "-> fails", {"radiotherapy-recency": "fail"})
def _(p):
    procedure(p, "rt", cc((CPT, "77412", "Radiation treatment delivery, >=1 MeV; complex")), "Radiation treatment",
              status="in-progress", period={"start": "2026-06-08T08:00:00-05:00"}, category=False)


@case("rt-entered-in-error", "A recent radiotherapy Procedure entered in error -> ignored: none recorded, passes")
def _(p):
    procedure(p, "rt", RT, "WBRT", status="entered-in-error", when="2026-06-10")


OTHER = cc((SCT, "363406005", "Malignant neoplasm of colon (disorder)"), (ICD, "C18.9", "Malignant neoplasm of colon, "
                                                                                         "unspecified"))


def colon_cancer(p, clinical, *, onset, abated):
    """The other cancer of the remission-window cases: colon cancer, past since `abated`."""
    p.condition("other", OTHER, "Colon adenocarcinoma", clinical=clinical, onset=onset, abatement=abated)


@case("other-cancer-remission-2y", "Colon cancer (SNOMED+C18.9) in remission, abated 2024-06-15 (2 years) -> under "
      "3 years: fails", {"other-cancer": "fail"})
def _(p):
    colon_cancer(p, "remission", onset="2023-02-01", abated="2024-06-15")


@case("other-cancer-remission-4y", "Colon cancer in remission, abated 2022-06-10 (4 years) -> 3 years or more: review",
      {"other-cancer": "review"})
def _(p):
    colon_cancer(p, "remission", onset="2021-01-10", abated="2022-06-10")


@case("other-cancer-active-undotted", "Active papillary thyroid cancer coded by undotted ICD-10-CM C73 and a local "
      "code -> fails", {"other-cancer": "fail"})
def _(p):
    p.condition("other", cc((ICD, "C73", "Malignant neoplasm of thyroid gland"), (LOCALDX, "88112", "Thyroid ca")),
                "Papillary thyroid carcinoma", onset="2025-09-01")


@case("non-melanoma-skin-cancer", "Active basal cell carcinoma of the nose (SNOMED 254701007 + undotted C44311) -> "
      "non-melanoma skin cancer is exempt: passes")
def _(p):
    p.condition("bcc", cc((SCT, "254701007", "Basal cell carcinoma of skin (disorder)"),
                          (ICD, "C44311", "Basal cell carcinoma of skin of nose")), "BCC nose", onset="2026-02-11")


@case("capecitabine-active", "Active MedicationRequest for capecitabine 500 mg (RxNorm 200328 beside a local formulary "
      "code) -> CNS-penetrant chemotherapy: review", {"cns-chemotherapy": "review"})
def _(p):
    med_request(p, "medrx", concept=cc(CAPE, (FORMULARY, "31337", "CAPECITABINE 500 MG PO TABS"),
                                       text="capecitabine (XELODA) 500 mg tablet"))


@case("trastuzumab-active-reference", "Active MedicationRequest for IV trastuzumab by medicationReference to a "
      "Medication in the Bundle (RxNorm 224905) -> allowed: passes")
def _(p):
    medication(p, "med", cc(TRAS, (FORMULARY, "40922", "TRASTUZUMAB IV SOLR"), text="trastuzumab (HERCEPTIN) IV"))
    med_request(p, "medrx", reference={"reference": f"Medication/{p.rid('med')}"})


@case("capecitabine-statement-contained", "Active MedicationStatement with a contained Medication (capecitabine, "
      "RxNorm 200328) -> review", {"cns-chemotherapy": "review"})
def _(p):
    p.res["medstmt"] = {
        "resourceType": "MedicationStatement", "id": p.rid("medstmt"),
        "contained": [{"resourceType": "Medication", "id": "m1", "code": cc(CAPE, text="Xeloda 500 mg")}],
        "status": "active", "medicationReference": {"reference": "#m1"}, "subject": p.subject,
        "effectivePeriod": {"start": "2026-04-01"}, "dateAsserted": "2026-06-01"}


@case("capecitabine-completed", "MedicationRequest for capecitabine, status completed (course ended) -> not current: "
      "passes")
def _(p):
    med_request(p, "medrx", status="completed", concept=cc(CAPE), authored="2025-10-01")


@case("temozolomide-administered", "MedicationAdministration of temozolomide 100 mg (RxNorm 317160) on 2026-06-05 "
      "(10 days before, within 28) -> review", {"cns-chemotherapy": "review"})
def _(p):
    p.res["medadmin"] = {
        "resourceType": "MedicationAdministration", "id": p.rid("medadmin"), "status": "completed",
        "medicationCodeableConcept": cc((RX, "317160", "temozolomide 100 MG Oral Capsule")), "subject": p.subject,
        "effectiveDateTime": "2026-06-05T21:00:00-05:00"}


@case("brain-met-active", "Active brain metastasis (SNOMED 94225005 + C79.31) beside LM -> review (confirm treated "
      "or not requiring treatment)", {"brain-metastases": "review"})
def _(p):
    p.condition("brainmet", cc((SCT, "94225005", "Secondary malignant neoplasm of brain (disorder)"),
                               (ICD, "C79.31", "Secondary malignant neoplasm of brain")), "Brain metastases",
                onset="2025-12-01")


@case("brain-met-resolved", "Brain metastasis (C79.31) resolved after SRS -> treated: passes")
def _(p):
    p.condition("brainmet", cc((ICD, "C79.31", "Secondary malignant neoplasm of brain")), "Brain metastasis",
                clinical="resolved", onset="2024-05-01", abatement="2024-09-01")


@case("her2-ihc2-fish-positive", "HER2 IHC 2+ (2025-11-03) then FISH positive (2025-11-10) -> passes")
def _(p):
    her2_ihc(p, "2+")
    her2_ish(p, True)


@case("her2-fish-positive-only", "Only a HER2 FISH positive (no IHC) -> passes")
def _(p):
    p.drop("her2-ihc")
    her2_ish(p, True)


@case("her2-ihc2-no-ish", "HER2 IHC 2+ without ISH -> unknown (equivocal), ISH suggested",
      {"her2-positive": "unknown"}, {"her2-positive": "equivocal"}, {"her2-positive": "her2-ish"})
def _(p):
    her2_ihc(p, "2+")


@case("her2-ihc1", "HER2 IHC 1+ -> fails (HER2-negative)", {"her2-positive": "fail"})
def _(p):
    her2_ihc(p, "1+")


@case("her2-none", "No HER2 result at all -> unknown (no-data), HER2 IHC suggested",
      {"her2-positive": "unknown"}, {"her2-positive": "no-data"}, {"her2-positive": "her2-ihc"})
def _(p):
    p.drop("her2-ihc")


@case("her2-positive-condition", "No HER2 Observation; a Condition 'HER2-positive carcinoma of breast' (SNOMED "
      "427685000) -> passes")
def _(p):
    p.drop("her2-ihc")
    p.condition("her2dx", cc((SCT, "427685000", "Human epidermal growth factor 2 positive carcinoma of breast")),
                "HER2+ breast cancer")


@case("man", "Man aged 61 with breast cancer (C50.922, male) and LM -> pregnancy not applicable, contraception "
      "review (sexually active males)", {"pregnancy-breastfeeding": "not-applicable"})
def _(p):
    p.res["patient"].update(gender="male", birthDate="1965-01-20")
    p.res["patient"]["extension"][0]["valueCode"] = "M"
    p.drop("hcg")
    p.condition("bc", cc((ICD, "C50.922", "Malignant neoplasm of unspecified site of left male breast")),
                "Male breast cancer, left")


@case("woman-over-55", "Woman aged 61, no hCG -> contraception not applicable; pregnancy review (over 55, no data)",
      {"contraception": "not-applicable", "pregnancy-breastfeeding": "review"})
def _(p):
    p.res["patient"]["birthDate"] = "1965-02-01"
    p.drop("hcg")


@case("trastuzumab-allergy", "Active, confirmed allergy to trastuzumab (RxNorm 224905) -> fails",
      {"trastuzumab-hypersensitivity": "fail"})
def _(p):
    p.res["allergy"].update(code=cc(TRAS, text="Trastuzumab"), category=["medication"], criticality="high")


@case("herceptin-allergy-text-only", "An active allergy recorded as text only, 'Herceptin - infusion reaction' -> "
      "review (text-only)", {"trastuzumab-hypersensitivity": "review"}, {"trastuzumab-hypersensitivity": "text-only"})
def _(p):
    p.res["allergy"]["code"] = {"text": "Herceptin - infusion reaction"}


@case("no-allergy-information", "No AllergyIntolerance at all -> review (confirm no hypersensitivity)",
      {"trastuzumab-hypersensitivity": "review"})
def _(p):
    p.drop("allergy")


@case("deceased", "Patient.deceasedDateTime 2026-06-12 -> alive fails", {"alive": "fail"})
def _(p):
    p.res["patient"]["deceasedDateTime"] = "2026-06-12T03:10:00-05:00"


@case("age-17", "Aged 17 (born 2008-09-01) -> age fails", {"age": "fail"})
def _(p):
    p.res["patient"]["birthDate"] = "2008-09-01"


@case("pregnant-hcg", "Serum hCG 1,250 IU/L on 2026-06-10 -> pregnancy fails", {"pregnancy-breastfeeding": "fail"})
def _(p):
    p.res["hcg"]["valueQuantity"]["value"] = 1250


@case("undotted-codes-no-status", "Breast cancer and LM coded only by undotted ICD-10-CM (C50912, C7932) with no "
      "clinical or verification status -> read as active, confirmed: eligible")
def _(p):
    p.condition("bc", cc((ICD, "C50912", "Malignant neoplasm of unsp site of left female breast")), "Breast cancer",
                clinical=None, verification=None)
    p.condition("lm", cc((ICD, "C7932", "Secondary malignant neoplasm of cerebral meninges")), "LM",
                clinical=None, verification=None, onset="2026-05-26")


@case("labs-stale", "Every lab of 2026-05-01 (45 days before; look-back 28) -> the seven blood and chemistry criteria "
      "unknown (stale), their panels suggested",
      {k: "unknown" for k in ("neutrophils", "platelets", "hemoglobin", "wbc", "creatinine", "bilirubin",
                              "transaminases")},
      {k: "stale" for k in ("neutrophils", "platelets", "hemoglobin", "wbc", "creatinine", "bilirubin",
                            "transaminases")},
      {"neutrophils": "cbc-with-differential", "platelets": "cbc-with-differential",
       "hemoglobin": "cbc-with-differential", "wbc": "cbc-with-differential",
       "creatinine": "comprehensive-metabolic-panel", "bilirubin": "hepatic-function-panel",
       "transaminases": "hepatic-function-panel"})
def _(p):
    for key in LABS:
        p.res[key]["effectiveDateTime"] = "2026-05-01T08:45:00-05:00"
        p.res[key]["issued"] = "2026-05-01T12:00:00-05:00"


@case("rt-start-only-old", "Radiotherapy completed, performedPeriod with a start (2026-05-04) and no end -> it may have "
      "run into the last 14 days: unknown (no end date)", {"radiotherapy-recency": "unknown"},
      {"radiotherapy-recency": "no-date"})
def _(p):
    procedure(p, "rt", RT, "WBRT", period={"start": "2026-05-04T09:00:00-05:00"})


@case("rt-preparation", "Radiotherapy in preparation (planned) -> review: it would be concurrent, a clinician schedules "
      "it", {"radiotherapy-recency": "review"})
def _(p):
    procedure(p, "rt", RT, "WBRT", status="preparation", period={"start": "2026-06-22"})


@case("rt-local-code-srs-recent", "A Procedure under a local code only, text 'SRS cerebellar lesion 18 Gy', "
      "performedDateTime 2026-06-09 -> the safety net: review", {"radiotherapy-recency": "review"},
      {"radiotherapy-recency": "unrecognised-code"})
def _(p):
    procedure(p, "rt", cc(("urn:oid:1.2.840.114350.1.13.0.1.7.2.696580", "RAD2200", "SRS single fraction")),
              "SRS cerebellar lesion 18 Gy", when="2026-06-09T14:00:00-05:00", category=False)


@case("melanoma-active", "Active melanoma of skin (C43.9) -> melanoma is not exempt: fails", {"other-cancer": "fail"})
def _(p):
    p.condition("other", cc((ICD, "C43.9", "Malignant melanoma of skin, unspecified"),
                            (SCT, "372244006", "Malignant melanoma (disorder)")), "Melanoma", onset="2025-07-07")


@case("cervix-cis", "Carcinoma in situ of the cervix (D06.9) -> exempt: passes")
def _(p):
    p.condition("other", cc((ICD, "D06.9", "Carcinoma in situ of cervix, unspecified")), "CIN III / CIS cervix",
                onset="2019-03-01")


@case("history-of-colon-cancer-z85", "Personal history of colon cancer (Z85.038) -> dates unknown: review",
      {"other-cancer": "review"})
def _(p):
    p.condition("other", cc((ICD, "Z85.038", "Personal history of other malignant neoplasm of large intestine")),
                "H/O colon cancer", onset=None)


@case("other-cancer-resolved-no-date", "Lymphoma (C83.30) resolved, no abatement date -> review",
      {"other-cancer": "review"})
def _(p):
    p.condition("other", cc((ICD, "C83.30", "Diffuse large B-cell lymphoma, unspecified site")), "DLBCL",
                clinical="resolved", onset="2012-05-01")


@case("brain-met-no-status", "Brain metastasis (undotted C7931) without clinicalStatus -> current: review",
      {"brain-metastases": "review"})
def _(p):
    p.condition("brainmet", cc((ICD, "C7931", "Secondary malignant neoplasm of brain")), "Brain mets",
                clinical=None, verification=None, onset="2026-05-26")


@case("her2-ihc2-ish-negative", "HER2 IHC 2+ then FISH negative -> fails", {"her2-positive": "fail"})
def _(p):
    her2_ihc(p, "2+")
    her2_ish(p, False)


@case("her2-interpretation-positive", "Only an overall HER2 interpretation (LOINC 48676-1) Positive -> passes")
def _(p):
    p.drop("her2-ihc")
    p.obs("her2-int", cc((LOINC, "48676-1", "HER2 [Interpretation] in Tissue")), "HER2 status", "2025-11-12",
          valueCodeableConcept=cc((LOINC, "LA6576-8", "Positive")))


@case("her2-newer-ihc1-after-3plus", "HER2 IHC 3+ (2022 primary) and a newer IHC 1+ (2026-05-28, LM biopsy) -> the "
      "latest decides: fails", {"her2-positive": "fail"})
def _(p):
    her2_ihc(p, "3+", when="2022-09-14")
    her2_ihc(p, "1+", when="2026-05-28", key="her2-ihc-2")


@case("lvef-text-range", "LVEF sent as valueString \"55-60%\" (the only LVEF) -> unknown (uninterpretable-value), "
      "echocardiogram suggested", {"lvef": "unknown"}, {"lvef": "uninterpretable-value"}, {"lvef": "echocardiogram"})
def _(p):
    r = p.res["lvef"]
    r.pop("valueQuantity")
    r["valueString"] = "55-60%"


@case("lvef-in-echo-report", "LVEF 45 % (LOINC 18043-0) as the result of an echocardiogram DiagnosticReport -> fails",
      {"lvef": "fail"})
def _(p):
    lvef(p, 45, loinc=("18043-0", "Left ventricular Ejection fraction by US"), when="2026-05-12T15:00:00-05:00")
    p.res["dr-echo"] = {
        "resourceType": "DiagnosticReport", "id": p.rid("dr-echo"), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "CUS"}]}],
        "code": cc((LOINC, "34552-0", "Cardiac 2D echo panel"), text="Transthoracic echocardiogram"),
        "subject": p.subject, "effectiveDateTime": "2026-05-12T15:00:00-05:00",
        "result": [{"reference": f"Observation/{p.rid('lvef')}"}], "conclusion": "Mildly reduced LV systolic function."}


@case("hb-mmol-6-21", "Haemoglobin 6.21 mmol/L (LOINC 59260-0) -> 9.998 g/dL: fails", {"hemoglobin": "fail"})
def _(p):
    p.lab("hb", ("59260-0", "Hemoglobin [Moles/volume] in Blood"), "HGBSI", "Hemoglobin", 6.21, "mmol/L",
          low=7.4, high=9.9)


@case("bilirubin-1-5-uln", "Total bilirubin 1.8 mg/dL with reference high 1.2 (exactly 1.5 x ULN) -> fails",
      {"bilirubin": "fail"})
def _(p):
    set_lab(p, "tbil", 1.8)


@case("capecitabine-on-hold", "MedicationRequest for capecitabine on hold -> a paused prescription is current: review",
      {"cns-chemotherapy": "review"})
def _(p):
    med_request(p, "medrx", status="on-hold", concept=cc(CAPE))


@case("capecitabine-unresolvable-reference", "Active MedicationRequest whose medicationReference names a Medication "
      "not in the record -> the agent cannot be read: unknown", {"cns-chemotherapy": "unknown"},
      {"cns-chemotherapy": "incomplete-data"},
      prefetch_only="a reference to a Medication the record does not hold: a FHIR server enforcing referential "
                    "integrity (HAPI's default) refuses it; an EHR's prefetch without the Medication sends it")
def _(p):
    med_request(p, "medrx", reference={"reference": "Medication/elsewhere-9917"})


@case("xeloda-statement-text-only", "Active MedicationStatement named by text only, 'Xeloda 1500 mg BID' -> review "
      "(text-only)", {"cns-chemotherapy": "review"}, {"cns-chemotherapy": "text-only"})
def _(p):
    p.res["medstmt"] = {
        "resourceType": "MedicationStatement", "id": p.rid("medstmt"), "status": "active",
        "medicationCodeableConcept": {"text": "Xeloda 1500 mg BID"}, "subject": p.subject,
        "effectivePeriod": {"start": "2026-05-01"}}


@case("lapatinib-and-letrozole", "Active lapatinib (RxNorm 672149) and letrozole (200064) MedicationRequests -> "
      "allowed agents: passes")
def _(p):
    med_request(p, "medrx", concept=cc((RX, "672149", "lapatinib 250 MG Oral Tablet")))
    med_request(p, "medrx2", concept=cc((RX, "200064", "letrozole 2.5 MG Oral Tablet")))


@case("trastuzumab-allergy-resolved-penicillin", "Trastuzumab allergy resolved, penicillin allergy active -> an "
      "allergy list with other allergies only: passes")
def _(p):
    p.res["allergy"].update(code=cc(TRAS), clinicalStatus=status_cc("allergyintolerance-clinical", "resolved"))
    p.res["allergy2"] = {
        "resourceType": "AllergyIntolerance", "id": p.rid("alg2"),
        "clinicalStatus": status_cc("allergyintolerance-clinical", "active"),
        "verificationStatus": status_cc("allergyintolerance-verification", "confirmed"),
        "code": cc((RX, "7980", "penicillin G"), text="Penicillin"), "patient": p.subject, "recordedDate": "2001-01-01"}


@case("woman-aged-55", "Woman aged exactly 55 (born 1971-06-15) -> contraception review (55 or younger)")
def _(p):
    p.res["patient"]["birthDate"] = "1971-06-15"


@case("age-18-today", "18th birthday on the evaluation date -> age passes")
def _(p):
    p.res["patient"]["birthDate"] = "2008-06-15"


@case("kps-newer-40", "KPS 80 on 2026-05-20, newer KPS 40 on 2026-06-12 -> the latest decides: fails",
      {"performance-status": "fail"})
def _(p):
    kps(p, 80, when="2026-05-20T10:00:00-05:00", key="kps-old")
    kps(p, 40, when="2026-06-12T10:00:00-05:00")


@case("kps-60-and-ecog-3", "KPS 60 and ECOG 3 on the same day -> a KPS decides when recorded: passes")
def _(p):
    kps(p, 60)
    ecog(p, 3)


@case("liver-met-local-code-alt-4x", "ALT 220 U/L (4.0 x ULN) and a liver metastasis recorded under a local code "
      "only ('Mets to liver') -> between the limits, not known by a code: unknown", {"transaminases": "unknown"},
      {"transaminases": "unrecognised-code"})
def _(p):
    set_lab(p, "alt", 220)
    p.condition("livermet", cc((LOCALDX, "1234567", "Mets to liver")), "Mets to liver", onset="2026-03-02")


@case("capecitabine-logical-reference", "Active MedicationRequest whose medicationReference is logical only (a "
      "formulary identifier and the display 'CAPECITABINE 500 MG PO TABS', no reference) -> named by text only: "
      "review (text-only)", {"cns-chemotherapy": "review"}, {"cns-chemotherapy": "text-only"})
def _(p):
    med_request(p, "medrx", reference={"identifier": {"system": FORMULARY, "value": "31337"},
                                       "display": "CAPECITABINE 500 MG PO TABS"})


# -- batch 2: more boundaries and shapes of the written reading ---------------------------------------------

@case("kps-stale-ecog-recent", "KPS 40 of 2026-04-20 (stale) and ECOG 1 of 2026-06-05 -> no KPS in the 30 days: the "
      "ECOG decides: passes")
def _(p):
    kps(p, 40, when="2026-04-20T09:00:00-05:00")
    ecog(p, 1)


@case("kps-off-scale", "KPS 110 (off the 0-100 scale) -> unreadable: unknown (uninterpretable-value)",
      {"performance-status": "unknown"}, {"performance-status": "uninterpretable-value"})
def _(p):
    kps(p, 110)


@case("lvef-no-unit", "LVEF 55 with no unit -> 0.55 and 55 cannot be told apart: unknown, echocardiogram",
      {"lvef": "unknown"}, {"lvef": "unit-not-convertible"}, {"lvef": "echocardiogram"})
def _(p):
    lvef(p, 55)
    p.res["lvef"]["valueQuantity"] = {"value": 55}


@case("lvef-fraction-under-percent", "LVEF 0.55 sent under '%' -> 0.55 % is outside 1-100 %: unknown "
      "(uninterpretable-value), echocardiogram", {"lvef": "unknown"}, {"lvef": "uninterpretable-value"},
      {"lvef": "echocardiogram"})
def _(p):
    lvef(p, 0.55)


@case("lvef-newer-45-older-65", "LVEF 65 % (2026-03-20) and a newer 45 % (2026-06-01) -> the latest decides: fails",
      {"lvef": "fail"})
def _(p):
    lvef(p, 45, when="2026-06-01T10:00:00-05:00")
    old = copy.deepcopy(p.res["lvef"])
    old.update(id=p.rid("lvef-old"), effectiveDateTime="2026-03-20T10:00:00-05:00",
               issued="2026-03-20T12:00:00-05:00", valueQuantity=dict(old["valueQuantity"], value=65))
    p.res["lvef-old"] = old


@case("alt-2-99x", "ALT 164 U/L (2.98 x ULN 55), no liver metastasis -> passes")
def _(p):
    set_lab(p, "alt", 164)


@case("alt-4-99x-liver-met", "ALT 274 U/L (4.98 x ULN) with a confirmed active liver metastasis -> passes")
def _(p):
    set_lab(p, "alt", 274)
    p.condition("livermet", cc((ICD, "C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct")),
                "Liver metastases", onset="2026-03-02")


@case("alt-6x-liver-met-unconfirmed", "ALT 330 U/L (6.0 x ULN) with an unconfirmed liver metastasis -> at or over "
      "5.0 x ULN fails whatever is recorded", {"transaminases": "fail"})
def _(p):
    set_lab(p, "alt", 330)
    p.condition("livermet", cc((ICD, "C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct")),
                "? liver mets", verification="unconfirmed", onset="2026-06-01")


@case("ast-no-range-liver-met", "AST 160 U/L without a reference range (fallback ULN 48: 3.3 x) and a confirmed active "
      "liver metastasis (SNOMED 94381002) -> under 5.0 x ULN: passes")
def _(p):
    set_lab(p, "ast", 160, high=None, low=None)
    p.condition("livermet", cc((SCT, "94381002", "Secondary malignant neoplasm of liver (disorder)")),
                "Liver metastases", onset="2026-03-02")


@case("wbc-per-mm3", "WBC 3,100 /mm3 (UCUM /mm3) -> 3.1 x10^9/L: passes")
def _(p):
    set_lab(p, "wbc", 3100, "/mm3", low=4000, high=11000)


@case("anc-k-per-ul-local-unit", "ANC 1.5 with the local unit 'K/uL' (no UCUM system) -> 1.5 x10^9/L: fails",
      {"neutrophils": "fail"})
def _(p):
    set_lab(p, "anc", 1.5, "K/uL", ucum=False, low=1.8, high=7.7)


@case("hb-newest-entered-in-error", "Newest Hb 8.9 g/dL (2026-06-12) entered in error, Hb 12.4 of 2026-06-08 -> the "
      "older valid result decides: passes")
def _(p):
    bad = copy.deepcopy(p.res["hb"])
    bad.update(id=p.rid("hb-2"), status="entered-in-error", effectiveDateTime="2026-06-12T08:00:00-05:00",
               issued="2026-06-12T10:00:00-05:00", valueQuantity=dict(bad["valueQuantity"], value=8.9))
    p.res["hb-2"] = bad


@case("creatinine-umol-exact-1-5", "Creatinine 132.6 umol/L with reference high 88.4 umol/L (exactly 1.5 x ULN) -> "
      "fails", {"creatinine": "fail"})
def _(p):
    p.lab("crea", ("14682-9", "Creatinine [Moles/volume] in Serum or Plasma"), "CREASI", "Creatinine", 132.6,
          "umol/L", low=45, high=88.4)


@case("rt-ended-late-evening-local", "Radiotherapy ended 2026-05-31T23:30-05:00 (June 1 in UTC) -> 15 calendar days "
      "in the zone it was recorded in: passes")
def _(p):
    procedure(p, "rt", RT, "WBRT", period={"start": "2026-05-18T08:00:00-05:00", "end": "2026-05-31T23:30:00-05:00"})


@case("rt-on-hold", "Radiotherapy course on hold (paused, started 2026-04-01) -> not over: fails",
      {"radiotherapy-recency": "fail"})
def _(p):
    procedure(p, "rt", RT, "WBRT", status="on-hold", period={"start": "2026-04-01"})


@case("rt-status-unknown", "Radiotherapy with status 'unknown', performedDateTime 2026-03-01 -> unknown",
      {"radiotherapy-recency": "unknown"}, {"radiotherapy-recency": "uninterpretable-value"})
def _(p):
    procedure(p, "rt", RT, "WBRT", status="unknown", when="2026-03-01")


@case("rt-year-only", "Radiotherapy completed, performedDateTime '2026' (a year) -> may be within 14 days: unknown "
      "(imprecise-date)", {"radiotherapy-recency": "unknown"}, {"radiotherapy-recency": "imprecise-date"})
def _(p):
    procedure(p, "rt", RT, "WBRT", when="2026")


@case("rt-not-done", "Radiotherapy not-done on 2026-06-10 -> ignored: passes")
def _(p):
    procedure(p, "rt", RT, "WBRT", status="not-done", when="2026-06-10")


@case("rt-text-only-old", "A Procedure with text only, 'XRT to T-spine 20 Gy/5', ended 2026-04-10 -> read with the "
      "same dates: not recent, passes")
def _(p):
    procedure(p, "rt", {}, "XRT to T-spine 20 Gy/5", period={"start": "2026-04-06", "end": "2026-04-10"},
              category=False)


@case("temozolomide-administered-28-days", "MedicationAdministration of temozolomide on 2026-05-18 (28 days before; "
      "window inclusive) -> review", {"cns-chemotherapy": "review"})
def _(p):
    p.res["medadmin"] = {
        "resourceType": "MedicationAdministration", "id": p.rid("medadmin"), "status": "completed",
        "medicationCodeableConcept": cc((RX, "317160", "temozolomide 100 MG Oral Capsule")), "subject": p.subject,
        "effectivePeriod": {"start": "2026-05-18T20:00:00-05:00", "end": "2026-05-18T20:05:00-05:00"}}


@case("temozolomide-administered-29-days", "MedicationAdministration of temozolomide on 2026-05-17 (29 days before) -> "
      "not recent: passes")
def _(p):
    p.res["medadmin"] = {
        "resourceType": "MedicationAdministration", "id": p.rid("medadmin"), "status": "completed",
        "medicationCodeableConcept": cc((RX, "317160", "temozolomide 100 MG Oral Capsule")), "subject": p.subject,
        "effectiveDateTime": "2026-05-17T20:00:00-05:00"}


@case("capecitabine-proposal", "MedicationRequest for capecitabine with intent 'proposal' -> not an order: passes")
def _(p):
    med_request(p, "medrx", concept=cc(CAPE))
    p.res["medrx"]["intent"] = "proposal"


@case("methotrexate-oral-low-dose", "Active MedicationRequest for oral methotrexate 2.5 mg (RxNorm 105585; low-dose "
      "form) -> not the injectable high-dose agent: passes")
def _(p):
    med_request(p, "medrx", concept=cc((RX, "105585", "methotrexate 2.5 MG Oral Tablet")))


@case("trastuzumab-and-capecitabine", "Active trastuzumab (IV) and capecitabine MedicationRequests -> an allowed agent "
      "never hides a listed one: review", {"cns-chemotherapy": "review"})
def _(p):
    med_request(p, "medrx", concept=cc(TRAS))
    med_request(p, "medrx2", concept=cc(CAPE))


@case("capecitabine-by-ingredient", "Active MedicationRequest by reference to a Medication coded only by a local "
      "formulary code, with ingredient capecitabine (RxNorm 194000) -> review", {"cns-chemotherapy": "review"})
def _(p):
    medication(p, "med", cc((FORMULARY, "31338", "CAPECITABINE 150 MG PO TABS")),
               ingredient=[{"itemCodeableConcept": cc((RX, "194000", "capecitabine")), "isActive": True}])
    med_request(p, "medrx", reference={"reference": f"Medication/{p.rid('med')}"})


@case("other-cancer-exactly-3y", "Colon cancer in remission, abated 2023-06-15 (the same calendar day 3 years earlier) "
      "-> counts as 3 years: review", {"other-cancer": "review"})
def _(p):
    colon_cancer(p, "remission", onset="2022-01-10", abated="2023-06-15")


@case("other-cancer-3y-minus-a-day", "Colon cancer resolved, abated 2023-06-16 (a day short of 3 years) -> fails",
      {"other-cancer": "fail"})
def _(p):
    colon_cancer(p, "resolved", onset="2022-01-10", abated="2023-06-16")


@case("other-cancer-abated-year-2023", "Colon cancer resolved, abatementDateTime '2023' -> some of its days are 3 "
      "years back: review", {"other-cancer": "review"})
def _(p):
    colon_cancer(p, "resolved", onset="2021", abated="2023")


@case("other-cancer-abated-year-2024", "Colon cancer resolved, abatementDateTime '2024' -> every day under 3 years: "
      "fails", {"other-cancer": "fail"})
def _(p):
    colon_cancer(p, "resolved", onset="2022", abated="2024")


@case("other-cancer-provisional", "Active lung cancer (C34.90), verificationStatus provisional -> review, never "
      "excluded", {"other-cancer": "review"})
def _(p):
    p.condition("other", cc((ICD, "C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung")),
                "Lung mass, probable primary lung cancer", verification="provisional", onset="2026-06-01")


@case("other-cancer-refuted", "Lung cancer (C34.90) refuted -> ignored: passes")
def _(p):
    p.condition("other", cc((ICD, "C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung")),
                "Lung cancer - ruled out", verification="refuted", onset="2026-05-01")


@case("merkel-cell-active", "Active Merkel cell carcinoma (C4A.9) -> not exempt: fails", {"other-cancer": "fail"})
def _(p):
    p.condition("other", cc((ICD, "C4A.9", "Merkel cell carcinoma, unspecified")), "Merkel cell carcinoma",
                onset="2025-10-01")


@case("lung-metastasis-and-breast-history", "Lung metastasis (C78.00) and personal history of breast cancer (Z85.3) "
      "-> both exempt: passes")
def _(p):
    p.condition("lungmet", cc((ICD, "C78.00", "Secondary malignant neoplasm of unspecified lung")), "Lung mets",
                onset="2025-12-01")
    p.condition("hx", cc((ICD, "Z85.3", "Personal history of malignant neoplasm of breast")), "H/O breast cancer",
                onset=None)


@case("malignancy-without-site", "Active 'Malignant neoplastic disease' (SNOMED 363346000, no site) -> may be the "
      "breast cancer: review", {"other-cancer": "review"})
def _(p):
    p.condition("other", cc((SCT, "363346000", "Malignant neoplastic disease (disorder)")), "Malignancy",
                onset="2022-08-30")


@case("other-cancer-text-only", "A Condition with text only, 'h/o Hodgkin lymphoma 1998' -> review (text-only)",
      {"other-cancer": "review"}, {"other-cancer": "text-only"})
def _(p):
    p.condition("other", {}, "h/o Hodgkin lymphoma 1998", clinical=None, verification=None, onset=None)


@case("brain-met-refuted", "Brain metastasis (C79.31) refuted -> ignored: passes")
def _(p):
    p.condition("brainmet", cc((ICD, "C79.31", "Secondary malignant neoplasm of brain")), "Brain mets - ruled out",
                verification="refuted", onset="2026-05-20")


@case("her2-ihc3-ish-negative-same-day", "HER2 IHC 3+ and FISH negative on the same day -> the results disagree: "
      "unknown (conflicting-results)", {"her2-positive": "unknown"}, {"her2-positive": "conflicting-results"})
def _(p):
    her2_ihc(p, "3+", when="2025-11-03")
    her2_ish(p, False, when="2025-11-03")


@case("her2-old-3plus-newer-2plus", "HER2 IHC 3+ (2022) and a newer IHC 2+ without ISH (2026-05-28) -> the latest is "
      "not definitive; the older does not decide: unknown (equivocal), ISH suggested", {"her2-positive": "unknown"},
      {"her2-positive": "equivocal"}, {"her2-positive": "her2-ish"})
def _(p):
    her2_ihc(p, "3+", when="2022-09-14")
    her2_ihc(p, "2+", when="2026-05-28", key="her2-ihc-2")


@case("her2-negative-condition", "No HER2 Observation; Condition 'HER2-negative carcinoma of breast' (SNOMED "
      "431396003) -> fails", {"her2-positive": "fail"})
def _(p):
    p.drop("her2-ihc")
    p.condition("her2dx", cc((SCT, "431396003", "Human epidermal growth factor 2 negative carcinoma of breast")),
                "HER2- breast cancer")


@case("kadcyla-allergy-local-code", "Active allergy under a local code only, 'ado-trastuzumab emtansine (KADCYLA)' -> "
      "the safety net: review (unrecognised-code)", {"trastuzumab-hypersensitivity": "review"},
      {"trastuzumab-hypersensitivity": "unrecognised-code"})
def _(p):
    p.res["allergy"]["code"] = cc((FORMULARY, "51220", "ado-trastuzumab emtansine (KADCYLA)"),
                                  text="Kadcyla - anaphylaxis")


@case("herceptin-hylecta-allergy", "Active allergy to Herceptin Hylecta (RxNorm 2119714) -> fails",
      {"trastuzumab-hypersensitivity": "fail"})
def _(p):
    p.res["allergy"]["code"] = cc((RX, "2119714", "5 ML hyaluronidase-oysk 2000 UNT/ML / trastuzumab 120 MG/ML "
                                                  "Injection [Herceptin Hylecta]"))


@case("no-known-food-allergy-only", "The only allergy entry is 'No known food allergy' -> says nothing about drugs: "
      "review", {"trastuzumab-hypersensitivity": "review"})
def _(p):
    p.res["allergy"]["code"] = cc((SCT, "429625007", "No known food allergy (situation)"))


@case("trastuzumab-allergy-entered-in-error", "Trastuzumab allergy entered in error beside NKDA -> ignored: passes")
def _(p):
    p.res["allergy2"] = {
        "resourceType": "AllergyIntolerance", "id": p.rid("alg2"),
        "clinicalStatus": status_cc("allergyintolerance-clinical", "active"),
        "verificationStatus": status_cc("allergyintolerance-verification", "entered-in-error"),
        "code": cc(TRAS), "patient": p.subject, "recordedDate": "2026-06-01"}


@case("age-18-tomorrow", "Turns 18 the day after the evaluation date -> 17: age fails", {"age": "fail"})
def _(p):
    p.res["patient"]["birthDate"] = "2008-06-16"


@case("lm-resolved", "LM Condition resolved -> review", {"leptomeningeal-metastases": "review"})
def _(p):
    p.res["lm"]["clinicalStatus"] = status_cc("condition-clinical", "resolved")
    p.res["lm"]["abatementDateTime"] = "2026-06-01"


@case("breast-cancer-provisional", "Breast cancer provisional -> unknown (diagnosis-unconfirmed)",
      {"breast-cancer": "unknown"}, {"breast-cancer": "diagnosis-unconfirmed"})
def _(p):
    p.res["bc"]["verificationStatus"] = status_cc("condition-ver-status", "provisional")
