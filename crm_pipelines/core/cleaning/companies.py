"""German, Austrian and Swiss company names: the legal form in its own field, and a base name for matching.

"Musterfirma GmbH & Co. KG", "MUSTERFIRMA G.m.b.H. u. Co KG" and "Musterfirma
Gesellschaft mit beschränkter Haftung" all have the base name "Musterfirma"; their
legal forms are "GmbH & Co. KG", "GmbH & Co. KG" and "GmbH". General-purpose
cleaners get the German forms wrong (UG (haftungsbeschränkt), e.K., gGmbH, the long
forms, the "& Co." combinations), so the project owns this list and its tests.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from .text import clean_text

# canonical form -> (family, patterns). Patterns are regular expressions over the name after
# light normalisation (see _prepare); longer and combined forms are tried first.
_WORD_END = r"(?=$|[\s,;()/-])"
_DOT = r"\.?\s*"


def _p(*parts: str) -> str:
    return r"\s*".join(parts)


_GMBH = r"(?:G\.?\s*m\.?\s*b\.?\s*H\.?|GesmbH)"
# "(haftungsbeschränkt)", also abbreviated "(haftungsbeschr.)".
_HAFTUNGSBESCHR = r"\(haftungsbeschr(?:(?:ä|ae|a)nkt)?\.?\)"
# Name fields of a fixed width (the ERP's NAME1: 40 characters) cut a long form short: "Soeding Gesellschaft mit
# beschränkter Haf". Read as the form only at the very end of the name and from its second word on.
_CUT = r"[^\s]*"


def _cut_short(*words: str) -> str:
    """A long form whose words after the second may be missing or cut off, at the end of the name."""
    tail = ""
    for word in reversed(words[2:]):
        tail = rf"(?:\s+{word[:1]}{_CUT}{tail})?"
    return rf"{words[0]}\s+{words[1]}{tail}$"


LEGAL_FORMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # combinations: a partnership whose general partner is a corporation
    ("UG (haftungsbeschränkt) & Co. KG", "KG", (_p(r"UG", _HAFTUNGSBESCHR, r"&", r"Co" + _DOT + r"KG"),)),
    ("GmbH & Co. KGaA", "KGaA", (_p(_GMBH, r"&", r"Co" + _DOT + r"KGaA"),)),
    ("SE & Co. KGaA", "KGaA", (_p(r"SE", r"&", r"Co" + _DOT + r"KGaA"),)),
    ("AG & Co. KGaA", "KGaA", (_p(r"AG", r"&", r"Co" + _DOT + r"KGaA"),)),
    ("GmbH & Co. KG", "KG", (_p(_GMBH, r"&", r"C(?:o|ie)" + _DOT + r"KG"),)),
    ("GmbH & Co. OHG", "OHG", (_p(_GMBH, r"&", r"Co" + _DOT + r"OHG"),)),
    ("AG & Co. KG", "KG", (_p(r"AG", r"&", r"Co" + _DOT + r"KG"),)),
    ("AG & Co. OHG", "OHG", (_p(r"AG", r"&", r"Co" + _DOT + r"OHG"),)),
    ("SE & Co. KG", "KG", (_p(r"SE", r"&", r"Co" + _DOT + r"KG"),)),
    ("GmbH & Co.", "KG", (_p(_GMBH, r"&", r"Co\.?"),)),
    # long forms cut short by a fixed-width field (before the long forms: "Kommanditgesellschaft auf Akt"
    # is not a KG)
    ("gGmbH", "GmbH", (_cut_short(r"gemeinn(?:ü|ue|u)tzige", r"Gesellschaft", r"mit", r"beschränkter", r"Haftung"),)),
    ("GmbH", "GmbH", (_cut_short(r"Gesellschaft", r"mit", r"beschränkter", r"Haftung"),)),
    ("KGaA", "KGaA", (_cut_short(r"Kommanditgesellschaft", r"auf", r"Aktien"),)),
    ("GbR", "GbR", (_cut_short(r"Gesellschaft", r"b(?:ü|ue|u)rgerlichen", r"Rechts"),)),
    ("UG (haftungsbeschränkt)", "GmbH", (_p(r"UG", r"\(haftungsbeschr" + _CUT + "$"),)),
    # long forms
    ("gGmbH", "GmbH", (r"gemeinn(?:ü|ue|u)tzige\s+(?:GmbH|Gesellschaft\s+mit\s+beschr(?:ä|ae|a)nkter\s+Haftung)",)),
    ("GmbH", "GmbH", (r"Gesellschaft\s+mit\s+beschr(?:ä|ae|a)nkter\s+Haftung",)),
    ("KGaA", "KGaA", (r"Kommanditgesellschaft\s+auf\s+Aktien",)),
    ("AG", "AG", (r"Aktiengesellschaft",)),
    ("KG", "KG", (r"Kommanditgesellschaft",)),
    ("OHG", "OHG", (r"offene\s+Handelsgesellschaft",)),
    ("GbR", "GbR", (r"Gesellschaft\s+b(?:ü|ue|u)rgerlichen\s+Rechts",)),
    ("eG", "eG", (r"eingetragene\s+Genossenschaft",)),
    ("e.V.", "e.V.", (r"eingetragener\s+Verein",)),
    ("e.K.", "e.K.", (r"eingetragene[rn]?\s+Kauf(?:mann|frau)",)),
    ("PartG mbB", "PartG", (r"PartG\s*mbB", r"Partnerschaftsgesellschaft\s+mbB")),
    ("PartG", "PartG", (r"PartG", r"Partnerschaftsgesellschaft")),
    # short forms
    ("UG (haftungsbeschränkt)", "GmbH", (_p(r"UG", _HAFTUNGSBESCHR), r"UG")),
    ("gGmbH", "GmbH", (r"gGmbH",)),
    ("GmbH", "GmbH", (r"G" + _DOT + r"m" + _DOT + r"b" + _DOT + r"H\.?", r"GesmbH", r"Ges\.?\s*m\.?\s*b\.?\s*H\.?", r"GmbH")),
    ("mbH", "GmbH", (r"mbH",)),
    ("KGaA", "KGaA", (r"KGaA",)),
    ("SE", "AG", (r"SE",)),
    ("AG", "AG", (r"AG", r"A\.G\.")),
    ("KG", "KG", (r"KG",)),
    ("OHG", "OHG", (r"OHG", r"oHG")),
    ("OG", "OHG", (r"OG",)),  # Austria: offene Gesellschaft
    ("GbR", "GbR", (r"GbR",)),
    ("e.K.", "e.K.", (r"e\.?\s*K(?:fm|fr)?\.?", r"eK")),
    ("e.U.", "e.K.", (r"e\.?\s*U\.",)),  # Austria: eingetragenes Unternehmen
    ("eG", "eG", (r"e\.?\s?G\.?",)),
    ("e.V.", "e.V.", (r"e\.?\s*V\.?",)),
    ("Sàrl", "GmbH", (r"S(?:à|a)rl", r"S\.(?:à|a)\.r\.l\.")),  # Switzerland (fr)
    ("SA", "AG", (r"SA",)),  # Switzerland (fr)
)

FAMILIES = {form: family for form, family, _ in LEGAL_FORMS}
# A "GmbH & Co. KG" is also written as its general partner ("GmbH") or as just "KG":
# these are the same company seen with less detail, not a conflict.
_COMPATIBLE = {
    frozenset({"GmbH", "KG"}), frozenset({"AG", "KG"}), frozenset({"GmbH", "OHG"}), frozenset({"AG", "OHG"}),
    frozenset({"GmbH", "KGaA"}), frozenset({"AG", "KGaA"}),
}
# One alternation over every form, in priority order: at a given position the first (longest,
# combined) alternative wins, so "GmbH & Co. KG" is read before "GmbH". One scan per name.
_COMBINED = re.compile(
    r"(?:^|(?<=[\s,;(/-]))(?:" + "|".join(f"(?P<f{i}>{'|'.join(p)})" for i, (_f, _fam, p) in enumerate(LEGAL_FORMS))
    + r")" + _WORD_END, re.IGNORECASE)
_FORM_OF_GROUP = {f"f{i}": form for i, (form, _fam, _p) in enumerate(LEGAL_FORMS)}
_TRAILING_JUNK = re.compile(r"[\s,;&+/\-–.]+$")
_LEADING_JUNK = re.compile(r"^[\s,;&+/\-–.]+")
_SPACES = re.compile(r"\s+")
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "ae", "Ö": "oe", "Ü": "ue"})
_STOPWORDS = frozenset({"und", "u", "the", "der", "die", "das", "fuer", "von", "co"})


@dataclass(frozen=True)
class CompanyName:
    base: str          # the name without the legal form, as written ("Musterfirma")
    legal_form: str | None  # canonical form ("GmbH & Co. KG")
    key: str           # matching key: lower case, umlauts spelled out, punctuation removed ("musterfirma")


def _prepare(name: str) -> str:
    text = clean_text(name)
    text = text.replace("＆", "&")
    text = re.sub(r"\s+(?:u\.|und)\s+(?=Co\b|Cie\b)", " & ", text, flags=re.IGNORECASE)
    text = re.sub(r"\s*\+\s*(?=Co\b)", " & ", text, flags=re.IGNORECASE)
    return _SPACES.sub(" ", text).strip()


@lru_cache(maxsize=500_000)
def parse_company_name(name: str | None) -> CompanyName:
    """Splits a company name into base name and canonical legal form (None when there is none)."""
    if not name or not name.strip():
        return CompanyName("", None, "")
    text = _prepare(name)
    found: tuple[int, int, str] | None = None
    # The form is at the end, or followed only by an addition ("Werk Süd"): take the last one.
    # A name that starts with a form word ("AG Musterstadt", "SE Elektro") keeps it as name.
    for m in _COMBINED.finditer(text):
        if m.start() > 0 and m.end() > m.start():
            found = (m.start(), m.end(), _FORM_OF_GROUP[m.lastgroup])
    if found is None:
        base, form = text, None
    else:
        start, end, form = found
        base = (text[:start] + " " + text[end:]).strip()
    base = _TRAILING_JUNK.sub("", _LEADING_JUNK.sub("", base)).strip()
    base = _SPACES.sub(" ", base)
    return CompanyName(base=base, legal_form=form, key=company_key(base))


def company_key(base: str) -> str:
    text = clean_text(base).lower().translate(_UMLAUTS)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"&", " ", text)
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    tokens = [t for t in text.split() if t not in _STOPWORDS]
    return " ".join(tokens)


def legal_form_family(form: str | None) -> str | None:
    return FAMILIES.get(form) if form else None


def forms_compatible(a: str | None, b: str | None) -> str:
    """'same', 'compatible', 'conflict' or 'unknown' (one side has no form)."""
    if not a or not b:
        return "unknown"
    if a == b:
        return "same"
    fa, fb = FAMILIES.get(a), FAMILIES.get(b)
    if fa == fb or frozenset({fa, fb}) in _COMPATIBLE:
        return "compatible"
    # "Musterfirma GmbH & Co. KG" written as "Musterfirma GmbH": the general partner's form.
    if a in b or b in a:
        return "compatible"
    return "conflict"
