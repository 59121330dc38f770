"""Money and quantities as tenants (symbols) and staff (currency codes) read them."""

from decimal import Decimal as D

import pytest

from billing.money import (
    format_margin_percent,
    format_money,
    format_money_with_code,
    format_quantity,
    format_unit_price_with_code,
    plain_decimal,
)


@pytest.mark.parametrize(
    ("amount", "currency", "for_tenants", "for_staff"),
    [
        (D("1234.565"), "USD", "$1,234.57", "1,234.57 USD"),
        (D("-3.5"), "JPY", "-¥4", "-4 JPY"),
        (D("1.2345"), "KWD", "KWD 1.235", "1.235 KWD"),
        (D("0"), "EUR", "€0.00", "0.00 EUR"),
        (D("0E-12"), "EUR", "€0.00", "0.00 EUR"),
        (D("1234.5"), "CHF", "CHF 1,234.50", "1,234.50 CHF"),
        (D("-0.004"), "USD", "-$0.00", "-0.00 USD"),
        (D("-1500.25"), "SEK", "-SEK 1,500.25", "-1,500.25 SEK"),
        (5, "USD", "$5.00", "5.00 USD"),
        ("2.5", "GBP", "£2.50", "2.50 GBP"),
        (None, "USD", "—", "—"),
    ],
)
def test_money_reads_with_the_symbol_for_tenants_and_the_code_for_staff_rounded_half_up_to_the_minor_unit(
    amount, currency, for_tenants, for_staff
):
    assert (format_money(amount, currency), format_money_with_code(amount, currency)) == (
        for_tenants,
        for_staff,
    )


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (D("1234.565"), "USD", "$1,234.565"),
        (D("0.0000003"), "USD", "$0.0000003"),
        (D("-3.5"), "JPY", "-¥3.5"),
        (D("0"), "EUR", "€0"),
        (5, "USD", "$5"),
        (D("12"), "XX", "XX 12"),
    ],
)
def test_precise_money_keeps_every_digit_of_a_unit_price(amount, currency, text):
    assert format_money(amount, currency, precise=True) == text


def test_money_for_tenants_refuses_a_currency_that_is_not_an_iso_code():
    with pytest.raises(ValueError, match="not an ISO 4217 currency code"):
        format_money(D("12"), "XX")


def test_staff_read_money_in_a_currency_the_engine_does_not_know_with_two_places():
    assert format_money_with_code(D("12"), "XX") == "12.00 XX"


@pytest.mark.parametrize(
    ("amount", "unit_size", "currency", "text"),
    [
        (D("0.30"), D(1_000_000), "USD", "0.30 USD per 1,000,000"),
        (D("0.0000003"), D(1), "USD", "0.0000003 USD"),
        (D("5"), D(60), "JPY", "5 JPY per 60"),
        (D("0"), D(1), "USD", "0.00 USD"),
        (D("0.1"), D(1), "KWD", "0.100 KWD"),
        (D("1E+3"), D(1), "USD", "1,000.00 USD"),
        (D("1234.5"), D("1.5"), "XX", "1,234.50 XX per 1.5"),
        (None, D(1), "USD", "—"),
        # as a 12-place column returns them: the stored trailing zeros go, never scientific notation
        (D("0E-12"), D("1000000.000000"), "USD", "0.00 USD per 1,000,000"),
        (D("0.300000000000"), D("1000000.000000"), "USD", "0.30 USD per 1,000,000"),
        (D("0.000000075000"), D("1.000000"), "USD", "0.000000075 USD"),
        (D("12.500000000000"), D("1E+3"), "JPY", "12.5 JPY per 1,000"),
    ],
)
def test_staff_read_a_rate_at_full_precision_and_at_least_the_minor_unit(amount, unit_size, currency, text):
    assert format_unit_price_with_code(amount, unit_size, currency) == text


@pytest.mark.parametrize(
    ("quantity", "text"),
    [
        (D("1000000"), "1,000,000"),
        (D("1.500"), "1.5"),
        (D("1E+3"), "1,000"),
        (D("0"), "0"),
        (D("1234.5678"), "1,234.5678"),
        (D("-2.50"), "-2.5"),
        (3, "3"),
        (None, "—"),
    ],
)
def test_quantities_show_every_significant_digit_and_no_trailing_zeros(quantity, text):
    assert format_quantity(quantity) == text


@pytest.mark.parametrize(
    ("margin", "total", "text"),
    [
        (D("10"), D("40"), "25.0 %"),
        (D("1"), D("3"), "33.3 %"),
        (D("-1"), D("8"), "-12.5 %"),
        (D("0.05"), D("100"), "0.1 %"),
        (D("1"), D("0"), "—"),
    ],
)
def test_the_margin_is_a_share_of_the_total_with_one_decimal(margin, total, text):
    assert format_margin_percent(margin, total) == text


@pytest.mark.parametrize(
    ("amount", "unit_size", "currency", "text"),
    [
        (D("0.06568706193879535913959602678"), D(1000), "USD", "0.06569 USD per 1,000 (average)"),
        (D("123.456"), D(1), "USD", "123.46 USD (average)"),
        (D("123456.5"), D(60), "JPY", "123,457 JPY per 60 (average)"),
        (D("0.0000023456"), D(1), "USD", "0.000002346 USD (average)"),
        (D("0.1"), D(1), "KWD", "0.100 KWD (average)"),
        (D("0"), D(1), "USD", "0.00 USD (average)"),
    ],
)
def test_an_average_rate_shows_at_most_four_significant_digits_and_at_least_the_minor_unit(
    amount, unit_size, currency, text
):
    assert format_unit_price_with_code(amount, unit_size, currency, is_average=True) == text


@pytest.mark.parametrize(
    ("value", "min_places", "text"),
    [
        (D("0E-12"), 0, "0"),
        (D("0.300000000000"), 0, "0.3"),
        (D("1000000.000000"), 0, "1000000"),
        (D("1E+6"), 0, "1000000"),
        (D("49.0000"), 2, "49.00"),
        (D("49.1250"), 2, "49.125"),
        (D("500.0000"), 0, "500"),
        (D("-0.0500"), 3, "-0.050"),
        (D("0.000000000001"), 0, "0.000000000001"),
    ],
)
def test_a_stored_decimal_reads_as_it_was_entered(value, min_places, text):
    assert plain_decimal(value, min_places) == text
