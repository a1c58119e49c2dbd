"""The proof: a PDF of sample recipients, one page each, covering every content variant, for a
person to check before the list is released.

Each page shows the letter as the template would lay it out: the sender line, the address field,
the salutation, the variant's text with its tokens filled in, and a box naming the variant's
image file. The PDF uses the standard Helvetica font, whose character set (Latin-1) holds the
German umlauts and ß; a character outside it (a Polish Ł, say) is shown as its closest Latin
letter in the proof only: the CSV the print shop merges keeps every character.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pandas as pd

SENDER = "Example Maschinenbau GmbH · Industriestraße 1 · 01067 Dresden"


def sample(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """At least one recipient of every variant, then evenly spread over the list up to ``n``."""
    if rows.empty:
        return rows
    firsts = rows.drop_duplicates("variant").index.tolist()
    rest = [i for i in rows.index[:: max(1, len(rows) // max(n, 1))] if i not in firsts]
    chosen = (firsts + rest)[: max(n, len(firsts))]
    return rows.loc[sorted(chosen)]


def latin1(text: str) -> str:
    out = []
    for ch in str(text):
        try:
            ch.encode("latin-1")
            out.append(ch)
        except UnicodeEncodeError:
            folded = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
            out.append(folded or "?")
    return "".join(out)


def render_proof(rows: pd.DataFrame, campaign_name: str, path: Path, n: int = 12, csv_sha256: str = "") -> int:
    """Writes the proof PDF; returns its number of pages. Each page names the list's checksum: the approval
    quotes it, so an approval names the exact list its approver saw."""
    from fpdf import FPDF

    pages = sample(rows, n)
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(auto=False)  # one letter, one page: the layout is fixed
    pdf.set_title(latin1(f"Probedruck {campaign_name}"))
    for _, r in pages.iterrows():
        pdf.add_page()
        pdf.set_font("Helvetica", size=7)
        pdf.set_xy(20, 45)
        pdf.cell(85, 4, latin1(SENDER))
        pdf.set_font("Helvetica", size=11)
        y = 52
        for line in (r["name_line"], r["company_line"], r["street_line"],
                     f"{r['postal_code']} {r['city_line']}", r["country_line"]):
            if line:
                pdf.set_xy(20, y)
                pdf.cell(85, 5, latin1(line))
                y += 5
        pdf.set_xy(20, 105)
        pdf.set_font("Helvetica", style="B", size=11)
        pdf.cell(170, 6, latin1(r["salutation_line"] + ","))
        pdf.set_xy(20, 115)
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(115, 5.5, latin1(r["text"]))
        pdf.set_draw_color(120, 120, 120)
        pdf.rect(140, 110, 50, 50)
        pdf.set_xy(142, 130)
        pdf.set_font("Helvetica", size=7)
        pdf.multi_cell(46, 3.5, latin1(f"Bild: {r['@image']}"), align="C")
        pdf.set_xy(20, 277)
        pdf.set_font("Helvetica", size=7)
        pdf.cell(170, 4, latin1(f"PROBEDRUCK · Kampagne {campaign_name} · Variante {r['variant']} · "
                                f"Empfänger {r['recipient_id']} · Leitregion {r['leitregion'] or '-'}"
                                + (f" · Liste SHA-256 {csv_sha256[:16]}" if csv_sha256 else "")))
    if not len(pages):
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        pdf.cell(170, 6, latin1(f"Probedruck {campaign_name}: die Liste ist leer."))
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return max(len(pages), 1)
