"""Unit conversion: UCUM via ucumvert/pint for the factor, decimal for the value."""

from decimal import Decimal

import pytest

from cds_service.engine.quantities import NotConvertible, ucum_factor
from cds_service.trials import load_units

UNITS = load_units()


@pytest.mark.parametrize("value, unit, expected", [
    ("1.5", "10*9/L", "1.5"),
    ("1.5", "10*3/uL", "1.5"),
    ("1500", "/uL", "1.5"),
    ("1500", "/mm3", "1.5"),  # pint alone gives 1.5000000000000004
    ("90000", "/mm3", "90"),  # pint alone gives 90.00000000000003
    ("1.5", "10*3/mm3", "1.5"),
])
def test_cell_counts_convert_exactly_to_10e9_per_litre(value, unit, expected):
    assert UNITS.convert(Decimal(value), unit, "10*9/L") == Decimal(expected)


@pytest.mark.parametrize("value, unit, expected", [
    ("9.0", "g/dL", "90"),
    ("90", "g/L", "90"),
    ("5.59", "mmol/L", "89.999"),  # 5.59 x 1.61 = 8.9999 g/dL: at or below the 90 g/L boundary
    ("5.60", "mmol/L", "90.16"),
])
def test_hemoglobin_mass_and_molar_units(value, unit, expected):
    assert UNITS.convert(Decimal(value), unit, "g/L", "hemoglobin") == Decimal(expected)


def test_molar_units_need_the_analyte_bridge():
    with pytest.raises(NotConvertible):
        UNITS.convert(Decimal("5.59"), "mmol/L", "g/L")  # no analyte: no molar mass
    with pytest.raises(NotConvertible):
        UNITS.convert(Decimal("5.59"), "mmol/L", "U/L", "hemoglobin")  # the bridge does not reach U/L
    # the bridge chains with UCUM on both sides: mmol/L -> umol/L -> mg/dL -> g/L
    assert UNITS.convert(Decimal("0.02"), "mmol/L", "g/L", "total-bilirubin") == Decimal("0.0117")


def test_bilirubin_molar_to_mass_both_directions():
    assert UNITS.convert(Decimal("20"), "umol/L", "mg/dL", "total-bilirubin") == Decimal("1.17")
    back = UNITS.convert(Decimal("1.0"), "mg/dL", "umol/L", "total-bilirubin")
    assert abs(back - Decimal("17.0940")) < Decimal("0.0001")


def test_enzyme_units():
    assert UNITS.convert(Decimal("1"), "ukat/L", "U/L") == Decimal("60")
    # [IU]/L and U/L are the same for aminotransferases: a domain fact, not UCUM
    with pytest.raises(NotConvertible):
        UNITS.convert(Decimal("40"), "[IU]/L", "U/L")
    assert UNITS.convert(Decimal("40"), "[IU]/L", "U/L", "aminotransferase") == Decimal("40")
    assert UNITS.convert(Decimal("0.5"), "ukat/L", "U/L", "aminotransferase") == Decimal("30.0")


@pytest.mark.parametrize("code, unit, system, expected", [
    ("10*3/uL", "10*3/uL", "http://unitsofmeasure.org", "10*3/uL"),
    (None, "K/uL", None, "10*3/uL"),  # unit string only, local spelling
    (None, "x10E3/uL", None, "10*3/uL"),
    ("K/uL", "K/uL", "http://unitsofmeasure.org", "10*3/uL"),  # miscoded as UCUM kelvin: alias wins
    ("LOCAL-THOU", "thou/uL", "http://lab.example.org/units", "10*3/uL"),  # non-UCUM code: read the unit
    (None, "mg/dL", None, "mg/dL"),
    (None, None, None, None),
])
def test_ucum_of_a_quantity(code, unit, system, expected):
    assert UNITS.ucum_of(code, unit, system) == expected


@pytest.mark.parametrize("bad, target", [("%", "10*9/L"), ("K", "10*9/L"), ("cells", "10*9/L"),
                                         ("g/dL", "10*9/L"), ("mg/dL", "U/L")])
def test_unconvertible_units_raise(bad, target):
    with pytest.raises(NotConvertible):
        UNITS.convert(Decimal("1"), bad, target)


def test_factor_is_rounded_to_a_decimal_not_a_float():
    assert ucum_factor("/mm3", "10*9/L") == Decimal("0.001")
    assert ucum_factor("m[IU]/mL", "[IU]/L") == Decimal("1")


@pytest.mark.parametrize("unit, target", [("10*-400/L", "10*9/L"), ("U/L", "10*400.U/L"),
                                          ("10*-330.U/L", "U/L")])
def test_a_factor_beyond_binary_floating_point_is_not_a_conversion(unit, target):
    # pint's float factor underflows to 0 (or overflows): a 0 ULN once divided a ratio by zero
    with pytest.raises(NotConvertible):
        ucum_factor(unit, target)
