"""Cleaning: legal forms (the project's own table), e-mails, phones, names, Kölner Phonetik, addresses."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_pipelines.core.cleaning.addresses import clean_addresses, normalize_country, normalize_postcode, split_street
from crm_pipelines.core.cleaning.companies import forms_compatible, parse_company_name
from crm_pipelines.core.cleaning.emails import clean_emails, domain_of_website
from crm_pipelines.core.cleaning.names import clean_person_names, display_name, koelner_phonetik, name_key, split_titles
from crm_pipelines.core.cleaning.phones import clean_phones, to_e164

LEGAL_FORMS = [
    # (as written, base name, canonical legal form)
    ("Musterfirma GmbH", "Musterfirma", "GmbH"),
    ("Musterfirma G.m.b.H.", "Musterfirma", "GmbH"),
    ("Musterfirma G. m. b. H.", "Musterfirma", "GmbH"),
    ("MUSTERFIRMA GMBH", "MUSTERFIRMA", "GmbH"),
    ("Musterfirma Gesellschaft mit beschränkter Haftung", "Musterfirma", "GmbH"),
    ("Musterfirma Gesellschaft mit beschraenkter Haftung", "Musterfirma", "GmbH"),
    ("Lebenshilfe Musterstadt gGmbH", "Lebenshilfe Musterstadt", "gGmbH"),
    ("Lebenshilfe gemeinnützige GmbH", "Lebenshilfe", "gGmbH"),
    ("Müller Verwaltungs mbH", "Müller Verwaltungs", "mbH"),
    ("Siemens AG", "Siemens", "AG"),
    ("Muster Aktiengesellschaft", "Muster", "AG"),
    ("Porsche Automobil Holding SE", "Porsche Automobil Holding", "SE"),
    ("Schmidt KG", "Schmidt", "KG"),
    ("Schmidt Kommanditgesellschaft", "Schmidt", "KG"),
    ("Schmidt & Co. KG", "Schmidt & Co", "KG"),
    ("Weber OHG", "Weber", "OHG"),
    ("Weber offene Handelsgesellschaft", "Weber", "OHG"),
    ("Meier & Schulz GbR", "Meier & Schulz", "GbR"),
    ("Meier Gesellschaft bürgerlichen Rechts", "Meier", "GbR"),
    ("Novatec UG (haftungsbeschränkt)", "Novatec", "UG (haftungsbeschränkt)"),
    ("Novatec UG (haftungsbeschraenkt)", "Novatec", "UG (haftungsbeschränkt)"),
    ("Novatec UG", "Novatec", "UG (haftungsbeschränkt)"),
    ("Hans Müller e.K.", "Hans Müller", "e.K."),
    ("Hans Müller e.Kfm.", "Hans Müller", "e.K."),
    ("Anna Müller e.Kfr.", "Anna Müller", "e.K."),
    ("Hans Müller eK", "Hans Müller", "e.K."),
    ("Hans Müller eingetragener Kaufmann", "Hans Müller", "e.K."),
    ("Raiffeisenbank Musterstadt eG", "Raiffeisenbank Musterstadt", "eG"),
    ("Winzer eingetragene Genossenschaft", "Winzer", "eG"),
    ("SV Blau-Weiß Musterstadt e.V.", "SV Blau-Weiß Musterstadt", "e.V."),
    ("Förderverein eingetragener Verein", "Förderverein", "e.V."),
    ("Dr. Weber & Partner PartG", "Dr. Weber & Partner", "PartG"),
    ("Dr. Weber & Partner PartG mbB", "Dr. Weber & Partner", "PartG mbB"),
    ("Merck KGaA", "Merck", "KGaA"),
    ("Muster Kommanditgesellschaft auf Aktien", "Muster", "KGaA"),
    ("Musterfirma GmbH & Co. KG", "Musterfirma", "GmbH & Co. KG"),
    ("Musterfirma GmbH & Co KG", "Musterfirma", "GmbH & Co. KG"),
    ("Musterfirma GmbH u. Co. KG", "Musterfirma", "GmbH & Co. KG"),
    ("Musterfirma GmbH und Co. KG", "Musterfirma", "GmbH & Co. KG"),
    ("Musterfirma GmbH + Co. KG", "Musterfirma", "GmbH & Co. KG"),
    ("Musterfirma GmbH & Cie. KG", "Musterfirma", "GmbH & Co. KG"),
    ("MUSTERFIRMA G.m.b.H. u. Co KG", "MUSTERFIRMA", "GmbH & Co. KG"),
    ("Musterfirma GmbH & Co. OHG", "Musterfirma", "GmbH & Co. OHG"),
    ("Henkel AG & Co. KGaA", "Henkel", "AG & Co. KGaA"),
    ("Muster SE & Co. KGaA", "Muster", "SE & Co. KGaA"),
    ("Muster AG & Co. KG", "Muster", "AG & Co. KG"),
    ("Novatec UG (haftungsbeschränkt) & Co. KG", "Novatec", "UG (haftungsbeschränkt) & Co. KG"),
    ("Müller GmbH Werk Süd", "Müller Werk Süd", "GmbH"),
    ("Novatec UG (haftungsbeschr.)", "Novatec", "UG (haftungsbeschränkt)"),
    ("Novatec UG (haftungsbeschr.) & Co. KG", "Novatec", "UG (haftungsbeschränkt) & Co. KG"),
    # a long form cut short by a fixed-width field (the ERP's NAME1 holds 40 characters)
    ("Soeding Gesellschaft mit beschränkter Haf", "Soeding", "GmbH"),
    ("Protherm Gesellschaft mit beschraenkter H", "Protherm", "GmbH"),
    ("Euroflex Antriebe Gesellschaft mit beschr", "Euroflex Antriebe", "GmbH"),
    ("Lebenshilfe Musterstadt gemeinnützige Gesellschaft mit", "Lebenshilfe Musterstadt", "gGmbH"),
    ("Novadrive Kommanditgesellschaft auf Akt", "Novadrive", "KGaA"),
    ("Meier Gesellschaft bürgerlichen Rec", "Meier", "GbR"),
    ("Novatec UG (haftungsbeschrä", "Novatec", "UG (haftungsbeschränkt)"),
    # ... but only at the very end: a name that goes on is a name
    ("Gesellschaft mit Zukunft Consulting GmbH", "Gesellschaft mit Zukunft Consulting", "GmbH"),
    ("Deutsche Gesellschaft für Logistik", "Deutsche Gesellschaft für Logistik", None),
    # Austria and Switzerland
    ("Bauer Ges.m.b.H.", "Bauer", "GmbH"),
    ("Bauer GesmbH", "Bauer", "GmbH"),
    ("Huber e.U.", "Huber", "e.U."),
    ("Gruber OG", "Gruber", "OG"),
    ("Favre SA", "Favre", "SA"),
    ("Berger Sàrl", "Berger", "Sàrl"),
    # no legal form, or a name that starts with a form word
    ("Stadtwerke Musterstadt", "Stadtwerke Musterstadt", None),
    ("AG Musterstadt", "AG Musterstadt", None),
]


@pytest.mark.parametrize("name, base, form", LEGAL_FORMS)
def test_legal_form_extraction(name, base, form):
    parsed = parse_company_name(name)
    assert (parsed.base, parsed.legal_form) == (base, form)


def test_there_are_at_least_forty_legal_form_cases():
    assert len(LEGAL_FORMS) >= 40


def test_company_key_ignores_case_umlauts_and_punctuation():
    keys = {parse_company_name(n).key for n in ("Müller & Söhne GmbH", "MUELLER & SOEHNE G.m.b.H.", "Müller + Söhne GmbH & Co. KG")}
    assert keys == {"mueller soehne"}


@pytest.mark.parametrize("a, b, verdict", [
    ("GmbH", "GmbH", "same"), ("GmbH", "GmbH & Co. KG", "compatible"), ("GmbH", "mbH", "compatible"),
    ("GmbH & Co. KG", "KG", "compatible"), ("AG", "SE", "compatible"), ("GmbH", "AG", "conflict"),
    ("e.K.", "GmbH", "conflict"), ("eG", "e.V.", "conflict"), (None, "GmbH", "unknown"),
])
def test_legal_form_compatibility(a, b, verdict):
    assert forms_compatible(a, b) == verdict


def test_emails():
    out = clean_emails(pd.Series(["  J.Mueller@Musterfirma.DE ", "mailto:a@b.de", "kein-at-zeichen", "x@gmx.de", None], dtype=object))
    assert out["email_norm"].tolist() == ["j.mueller@musterfirma.de", "a@b.de", None, "x@gmx.de", None]
    assert out["email_domain"].tolist() == ["musterfirma.de", "b.de", None, "gmx.de", None]
    assert out["is_free_mail"].tolist() == [False, False, False, True, False]
    assert out["email_invalid"].tolist() == [False, False, True, False, False]
    assert domain_of_website(pd.Series(["https://www.Musterfirma.de/kontakt", "musterfirma.de", "n/a"])).tolist() == [
        "musterfirma.de", "musterfirma.de", None]


@pytest.mark.parametrize("raw, region, e164", [
    ("0351 4711-23", "DE", "+49351471123"), ("+49 (0)351 471123", "DE", "+49351471123"),
    ("0049 351 471123", "DE", "+49351471123"), ("(0351) 4711 23", "DE", "+49351471123"),
    ("0351/4711-23", "DE", "+49351471123"), ("+43 1 234567", "DE", "+431234567"), ("01 234567", "AT", "+431234567"),
    ("044 6813848", "CH", "+41446813848"), ("02 9876 5432", "AU", "+61298765432"), ("(212) 555-0187", "US", "+12125550187"),
    ("4711", "DE", None), ("n/a", "DE", None),
])
def test_phones_to_e164(raw, region, e164):
    assert to_e164(raw, region) == e164
    assert clean_phones(pd.Series([raw], dtype=object), region).iloc[0] == e164  # one rule, two speeds


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 +()/-.x", max_size=24), st.sampled_from(["DE", "AT", "US", "IT", "PL"]))
def test_the_scalar_and_the_vectorised_phone_rules_agree(raw, region):
    assert to_e164(raw, region) == clean_phones(pd.Series([raw], dtype=object), region).iloc[0]


def test_phones_vectorised_keep_missing():
    assert clean_phones(pd.Series([None, "0351 4711-0"], dtype=object)).tolist() == [None, "+4935147110"]


@pytest.mark.parametrize("name, code", [
    ("Müller", "657"), ("Mueller", "657"), ("Muller", "657"), ("Müller-Lüdenscheidt", "65752682"), ("Wikipedia", "3412"),
    ("Breschnew", "17863"), ("Schmidt", "862"), ("Schmitt", "862"), ("Meyer", "67"), ("Maier", "67"), ("Becker", "147"),
    ("Bäcker", "147"), ("Christoph", "47823"), ("Xaver", "4837"),
])
def test_koelner_phonetik(name, code):
    assert koelner_phonetik(name) == code


def test_names():
    assert split_titles("Herr Prof. Dr. Max") == ("Herr", "Prof. Dr.", "Max")
    assert display_name("MÜLLER") == "Müller" and display_name("Von Der Heide") == "Von der Heide"
    assert name_key("Müller-Lüdenscheidt") == "mueller luedenscheidt"
    out = clean_person_names(pd.Series(["Dr. Anna", "JÖRG"], dtype=object), pd.Series(["von Müller", "weiß"], dtype=object))
    assert out["first_name"].tolist() == ["Anna", "Jörg"]
    assert [None if pd.isna(v) else v for v in out["academic_title"]] == ["Dr.", None]
    assert out["last_name"].tolist() == ["von Müller", "Weiß"]
    assert out["last_key"].tolist() == ["von mueller", "weiss"]


@pytest.mark.parametrize("raw, street, number", [
    ("Hauptstr. 12a", "Hauptstraße", "12a"), ("Hauptstraße 12 a", "Hauptstraße", "12a"), ("Am Markt", "Am Markt", None),
    ("Lange Strasse 3-5", "Lange Straße", "3-5"), ("Karl-Marx-Allee 1/2", "Karl-Marx-Allee", "1/2"),
    ("Münchner Str 7", "Münchner Straße", "7"), ("Bahnhofstr.12", "Bahnhofstraße", "12"),
])
def test_street_and_house_number(raw, street, number):
    assert split_street(raw) == (street, number)


def test_postcodes_and_countries():
    assert normalize_postcode("1067", "DE") == "01067"
    assert normalize_postcode("D-01067", "DE") == "01067"
    assert normalize_postcode("1010", "AT") == "1010"
    assert normalize_postcode("123456", "DE") is None
    assert [normalize_country(c) for c in ("Deutschland", "D", "Österreich", "CH", None, "xx")] == ["DE", "DE", "AT", "CH", "DE", "XX"]
    out = clean_addresses(pd.Series(["Hauptstr. 1", "Ring 2"], dtype=object), None, pd.Series(["1067", "5020"], dtype=object),
                          pd.Series(["Dresden", "Salzburg"], dtype=object), pd.Series(["DE", None], dtype=object))
    # An explicit DE restores the leading zero; a 4-digit code without country is not forced into a PLZ.
    assert out["postal_code"].tolist() == ["01067", "5020"]
    assert out["country"].tolist() == ["DE", None]
    assert [None if pd.isna(v) else v for v in out["leitregion"]] == ["01", None]
