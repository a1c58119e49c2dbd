"""Print lists without Dagster: salutations, rules and branches, eligibility with reasons, households,
the CSV, the manifest, the proof PDF (rendered to PNG), approval and release."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from crm_pipelines.core.platform.configfile import ConfigError
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.print.lists import build_list, load_robinson
from crm_pipelines.core.print.release import PrintSettings, ReleaseRefused, approve, expire_outbox, record_list, release
from crm_pipelines.core.print.rules import choose_content, load_campaign
from crm_pipelines.core.print.salutation import name_line, salutation_line
from crm_pipelines.core.privacy_screen.identity import IdentityHasher, postal_value
from crm_pipelines.core.privacy_screen.suppression import SuppressionList
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

CAMPAIGN = load_campaign(DEFAULT_CONFIG_DIR / "campaigns" / "herbst-bayern.yaml")
HASHER = IdentityHasher("print-test-salt-0123456789")


@pytest.mark.parametrize("anrede, title, first, last, greeting, address", [
    ("Frau", "Dr.", "Eva", "Müller", "Sehr geehrte Frau Dr. Müller", "Frau Dr. Eva Müller"),
    ("Herr", "Prof. Dr.", "Hans", "von Weizsäcker", "Sehr geehrter Herr Prof. Dr. von Weizsäcker",
     "Herrn Prof. Dr. Hans von Weizsäcker"),
    ("Herr", "Dipl.-Ing.", "Jörg", "Groß", "Sehr geehrter Herr Groß", "Herrn Dipl.-Ing. Jörg Groß"),
    ("divers", "Dr.", "Alex", "Schmidt", "Guten Tag Dr. Alex Schmidt", "Dr. Alex Schmidt"),
    (None, None, "Eva", "MÜLLER", "Guten Tag Eva Müller", "Eva Müller"),
    ("Frau", None, None, "von der Heide", "Sehr geehrte Frau von der Heide", "Frau von der Heide"),
    (None, None, None, None, "Sehr geehrte Damen und Herren", ""),
])
def test_salutations(anrede, title, first, last, greeting, address):
    assert salutation_line(anrede, title, first, last) == greeting
    assert name_line(anrede, title, first, last) == address


def person(i: int, **kw) -> dict:
    base = {"golden_id": f"GC-{i:08d}", "salutation": "Frau", "academic_title": None, "first_name": "Eva",
            "last_name": f"Weiß{i}", "email": f"eva{i}@firma{i}.de", "crm_contact_id": None,
            "company_name": f"Firma {i} GmbH", "street": "Straße des 17. Juni", "house_number": str(i),
            "postal_code": "80331", "city": "München", "country": "DE", "account_id": f"GA-{i:08d}",
            "is_customer": True, "post_consent": None, "post_consent_basis": None, "score": 10.0, "stage": "lead",
            "months_since_last_order": 2.0, "industry": "Maschinenbau"}
    base.update(kw)
    base["plz_area"] = base["postal_code"][:1] if base["postal_code"] else None
    return base


def frame(*people) -> pd.DataFrame:
    return pd.DataFrame(list(people))


def no_screen():
    class Empty:
        empty = True

        def suppressed(self, f):
            import numpy as np

            return np.zeros(len(f), dtype=bool)
    return Empty()


def test_plz_area_8_rule_and_the_else_branches():
    f = frame(person(1, postal_code="80331", months_since_last_order=3.0),
              person(2, postal_code="80331", months_since_last_order=9.0),   # area 8 but no recent order
              person(3, postal_code="01067", months_since_last_order=1.0),   # a recent order, not area 8
              person(4, postal_code="80331", is_customer=False, stage="mql", months_since_last_order=None))
    chosen = [CAMPAIGN.branches[i].variant for i in choose_content(CAMPAIGN, f)]
    assert chosen == ["A-bayern-aktiv", "B-kunde", "B-kunde", "C-interessent"]


def test_exclusions_are_counted_by_reason_and_the_list_balances(sqlite_url, tmp_path):
    wh = Warehouse(sqlite_url)
    robinson = tmp_path / "robinson.csv"
    robinson.write_text("last_name;first_name;street;house_number;postal_code\nRoth;Anna;Hauptstr.;5;80333\n",
                        encoding="utf-8")
    hashed = tmp_path / "robinson_hashed.csv"
    hashed.write_text("hash\n" + hashlib.sha256(postal_value("Berg", "Am Hang", "9", "80335").encode()).hexdigest()
                      + "\n", encoding="utf-8")
    suppression = SuppressionList(wh, HASHER)
    suppression.add({("email", HASHER.email("eva2@firma2.de"))}, "P-2", "erasure", "r")
    f = frame(person(1),
              person(2),                                                                 # suppressed
              person(3, post_consent="objected"),                                        # Art. 21 objection
              person(4, is_customer=False, stage="mql"),                                 # prospect, no consent
              person(5, is_customer=False, stage="mql", post_consent="granted", post_consent_basis="consent",
                     last_name="Roth", street="Hauptstraße", house_number="5", postal_code="80333"),  # Robinson (plain)
              person(6, is_customer=False, stage="mql", post_consent="granted", post_consent_basis="consent",
                     last_name="Berg", street="Am Hang", house_number="9", postal_code="80335"),  # Robinson (hashed)
              person(7, street=None),                                                    # incomplete address
              person(8, postal_code="8033"),                                             # 4-digit PLZ in DE
              person(9, account_id="GA-00000001"),                                       # same company as 1
              person(10, is_customer=True, post_consent="granted", post_consent_basis="consent",
                     last_name="Roth", street="Hauptstraße", house_number="5", postal_code="80333"))  # customer: Robinson n/a
    pl = build_list(f, CAMPAIGN, suppression.screen(), load_robinson(robinson) | load_robinson(hashed))
    assert pl.excluded == {"suppressed": 1, "objection": 1, "no_postal_consent": 1, "robinson": 2,
                           "incomplete_address": 2, "household_duplicate": 1}
    assert pl.audience == 10 == len(pl.rows) + sum(pl.excluded.values())
    assert sorted(pl.golden_ids) == ["GC-00000001", "GC-00000010"]


def test_one_piece_per_household_or_per_company():
    twins = [person(1, last_name="Müller", house_number="3", account_id="GA-1"),
             person(2, last_name="MUELLER", first_name="Hans", salutation="Herr", house_number="3", account_id="GA-2",
                    score=50.0),
             person(3, last_name="Müller", house_number="4", account_id="GA-1")]
    household = load_campaign(DEFAULT_CONFIG_DIR / "campaigns" / "herbst-bayern.yaml")
    from dataclasses import replace

    by_household = build_list(frame(*twins), replace(household, dedupe="household"), no_screen(), set())
    # Müller and MUELLER at number 3 are one household; the higher score keeps it.
    assert by_household.excluded == {"household_duplicate": 1} and sorted(by_household.golden_ids) == [
        "GC-00000002", "GC-00000003"]
    by_account = build_list(frame(*twins), replace(household, dedupe="account"), no_screen(), set())
    assert by_account.excluded == {"household_duplicate": 1} and sorted(by_account.golden_ids) == [
        "GC-00000001", "GC-00000002"]


def test_the_csv_keeps_leading_zeros_umlauts_one_line_per_recipient_and_image_columns(sqlite_url, tmp_path):
    wh = Warehouse(sqlite_url)
    f = frame(person(1, postal_code="01067", city="Dresden", last_name="Groß-Müller", company_name="Bäckerei\nÖz & Söhne",
                     academic_title="Dr."),
              person(2, postal_code="80331", months_since_last_order=1.0))
    pl = build_list(f, CAMPAIGN, no_screen(), set())
    doc = record_list(wh, pl, CAMPAIGN, "run-0000001", tmp_path / "lists", "pytest", proof_samples=5)
    folder = tmp_path / "lists" / CAMPAIGN.name / doc["list_id"]
    raw = (folder / "list.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and hashlib.sha256(raw).hexdigest() == doc["csv_sha256"]
    text = raw.decode("utf-8")
    assert len(text.strip().splitlines()) == 3  # a header and one line per recipient
    rows = list(csv.DictReader(text.splitlines(), delimiter=";"))
    assert [r["postal_code"] for r in rows] == ["01067", "80331"]  # sorted by PLZ, the zero kept
    first = rows[0]
    assert first["salutation_line"] == "Sehr geehrte Frau Dr. Groß-Müller"
    assert first["company_line"] == "Bäckerei Öz & Söhne" and "Dresden" in first["text"]
    assert first["@image"] == "/srv/print/bilder/herbst/kundenservice.jpg" and first["leitregion"] == "01"
    assert first["recipient_id"].startswith("R-") and "GC-" not in text  # pseudonymous
    assert rows[1]["variant"] == "A-bayern-aktiv"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["csv_sha256"] == doc["csv_sha256"] and manifest["rules_sha256"] == CAMPAIGN.sha256
    assert manifest["variants"] == {"A-bayern-aktiv": 1, "B-kunde": 1} and manifest["balance_ok"]
    assert manifest["dialogpost"]["eligible"] is False and manifest["dialogpost"]["pieces"] == 2


def test_the_proof_pdf_shows_every_variant_with_umlauts(sqlite_url, tmp_path):
    import pypdfium2

    wh = Warehouse(sqlite_url)
    f = frame(person(1, postal_code="80331", months_since_last_order=1.0, last_name="Weiß"),
              person(2, postal_code="01067", last_name="Groß", city="Dresden"),
              person(3, postal_code="04109", is_customer=False, stage="sql", post_consent="granted",
                     post_consent_basis="consent", last_name="Jäger", city="Leipzig"))
    pl = build_list(f, CAMPAIGN, no_screen(), set())
    doc = record_list(wh, pl, CAMPAIGN, "run-0000002", tmp_path / "lists", "pytest", proof_samples=3)
    pdf = pypdfium2.PdfDocument(str(tmp_path / "lists" / CAMPAIGN.name / doc["list_id"] / "proof.pdf"))
    assert len(pdf) == 3 == doc["proof_pages"]
    texts = []
    for i, page in enumerate(pdf):
        texts.append(page.get_textpage().get_text_range())
        image = page.render(scale=1).to_pil()
        png = tmp_path / f"proof_{i}.png"
        image.save(png)
        assert png.stat().st_size > 5000
        # Something is printed: the page is not blank white.
        assert image.convert("L").getextrema()[0] < 100
    joined = "\n".join(texts)
    for variant in ("A-bayern-aktiv", "B-kunde", "C-interessent"):
        assert f"Variante {variant}" in joined
    assert "Sehr geehrte Frau Weiß" in joined and "Groß" in joined and "Jäger" in joined
    assert "Augsburg" in joined and "Herbstcheck" in joined and "Presslinie" in joined


def test_release_needs_an_approval_and_an_unchanged_file(sqlite_url, tmp_path):
    wh = Warehouse(sqlite_url)
    settings = PrintSettings(tmp_path / "outbox", 30, tmp_path / "approvals", None)
    pl = build_list(frame(person(1), person(2, postal_code="01067")), CAMPAIGN, no_screen(), set())
    doc = record_list(wh, pl, CAMPAIGN, "run-0000003", tmp_path / "lists", "pytest", proof_samples=1)
    with pytest.raises(ReleaseRefused, match="needs an approval"):
        release(wh, doc["list_id"], settings, "pytest")
    assert not settings.outbox.exists() or not any(settings.outbox.iterdir())
    with pytest.raises(ReleaseRefused, match="approver"):
        approve(wh, doc["list_id"], "  ", doc["csv_sha256"])
    with pytest.raises(ReleaseRefused, match="quote its SHA-256"):
        approve(wh, doc["list_id"], "Katrin Berger", "")
    approve(wh, doc["list_id"], "Katrin Berger", doc["csv_sha256"][:16])
    target = release(wh, doc["list_id"], settings, "pytest")
    assert target.read_bytes() == (tmp_path / "lists" / CAMPAIGN.name / doc["list_id"] / "list.csv").read_bytes()
    assert target.with_suffix("").with_suffix(".manifest.json").exists()
    with pytest.raises(ReleaseRefused, match="released"):
        approve(wh, doc["list_id"], "Katrin Berger", doc["csv_sha256"])
    # A list edited after it was built is refused, approval or not.
    pl2 = build_list(frame(person(3)), CAMPAIGN, no_screen(), set())
    doc2 = record_list(wh, pl2, CAMPAIGN, "run-0000004", tmp_path / "lists", "pytest", proof_samples=1)
    approve(wh, doc2["list_id"], "Katrin Berger", doc2["csv_sha256"])
    (tmp_path / "lists" / CAMPAIGN.name / doc2["list_id"] / "list.csv").write_text("verändert", encoding="utf-8")
    with pytest.raises(ReleaseRefused, match="changed after it was built"):
        release(wh, doc2["list_id"], settings, "pytest")
    # Past the retention period the released list leaves the outbox.
    assert expire_outbox(wh, settings, "pytest", now=datetime.now(timezone.utc) + timedelta(days=10)) == []
    assert expire_outbox(wh, settings, "pytest", now=datetime.now(timezone.utc) + timedelta(days=31)) == [target.name]
    assert not target.exists()
    from crm_pipelines.core.platform import audit

    actions = [h["action"] for h in audit.history(wh, [doc["list_id"], doc2["list_id"]])]
    assert actions.count("print.release_refused") == 2 and "print.released" in actions and "print.expired" in actions


def test_campaign_files_are_validated_with_file_and_key(tmp_path):
    text = (DEFAULT_CONFIG_DIR / "campaigns" / "herbst-bayern.yaml").read_text(encoding="utf-8")
    for bad, key in ((text.replace("field: plz_area", "field: plz_gebiet"), "content[0].when.all[0].field"),
                     (text.replace("{salutation_line}, danke", "{anrede}, danke"), "content[0].text"),
                     (text.replace("  - variant: C-interessent", "  - when: {field: stage, equals: lead}\n"
                                                                 "    variant: C-interessent"), "content[2]"),
                     (text.replace("dedupe: account", "dedupe: familie"), "dedupe")):
        path = tmp_path / "campaign.yaml"
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            load_campaign(path)
        assert "campaign.yaml" in str(err.value) and key in str(err.value), str(err.value)


def test_an_erasure_takes_the_person_out_of_built_and_released_lists(sqlite_url, tmp_path):
    import sqlalchemy as sa

    from crm_pipelines.core.platform.schema import PRINT_LISTS
    from crm_pipelines.core.print.release import remove_recipients

    wh = Warehouse(sqlite_url)
    settings = PrintSettings(tmp_path / "outbox", 30, tmp_path / "approvals", None)
    people = frame(person(1), person(2, postal_code="01067"), person(3, postal_code="04109"))
    released_doc = record_list(wh, build_list(people, CAMPAIGN, no_screen(), set()), CAMPAIGN, "r1",
                               tmp_path / "lists", "pytest", proof_samples=1)
    approve(wh, released_doc["list_id"], "K. Berger", released_doc["csv_sha256"])
    outbox_file = release(wh, released_doc["list_id"], settings, "pytest")
    from dataclasses import replace

    other = replace(CAMPAIGN, name="zweite")
    approved_doc = record_list(wh, build_list(people, other, no_screen(), set()), other, "r2", tmp_path / "lists",
                               "pytest", proof_samples=1)
    approve(wh, approved_doc["list_id"], "K. Berger", approved_doc["csv_sha256"])

    removed = remove_recipients(wh, ["GC-00000002"], "pytest")
    assert removed == {released_doc["list_id"]: 1, approved_doc["list_id"]: 1}
    assert "Weiß2" not in outbox_file.read_text(encoding="utf-8")
    assert len(outbox_file.read_text(encoding="utf-8").strip().splitlines()) == 3
    rows = wh.read_frame(sa.select(PRINT_LISTS)).set_index("list_id")
    # The approved list must be checked again; its checksum follows the new file.
    assert rows.loc[approved_doc["list_id"], "status"] == "built"
    assert rows.loc[approved_doc["list_id"], "recipients"] == 2
    with pytest.raises(ReleaseRefused, match="needs an approval"):
        release(wh, approved_doc["list_id"], settings, "pytest")
    # The approval of the old proof does not carry over: the list changed.
    with pytest.raises(ReleaseRefused, match="changed after the proof"):
        approve(wh, approved_doc["list_id"], "K. Berger", approved_doc["csv_sha256"])
    approve(wh, approved_doc["list_id"], "K. Berger", rows.loc[approved_doc["list_id"], "csv_sha256"])
    assert "Weiß2" not in release(wh, approved_doc["list_id"], settings, "pytest").read_text(encoding="utf-8")
    manifest = json.loads(outbox_file.with_suffix("").with_suffix(".manifest.json").read_text(encoding="utf-8"))
    assert manifest["csv_sha256"] == hashlib.sha256(outbox_file.read_bytes()).hexdigest()
    assert manifest["changed_by_erasure"] == 1


def test_an_approval_names_the_list_and_prospects_need_a_robinson_list(sqlite_url, tmp_path):
    import sqlalchemy as sa

    from crm_pipelines.core.platform.schema import PRINT_LISTS

    wh = Warehouse(sqlite_url)
    no_robinson = PrintSettings(tmp_path / "outbox", 30, tmp_path / "approvals", None)
    prospect = person(2, is_customer=False, stage="mql", post_consent="granted", post_consent_basis="consent")
    first = record_list(wh, build_list(frame(person(1), prospect), CAMPAIGN, no_screen(), set()), CAMPAIGN, "r1",
                        tmp_path / "lists", "pytest", proof_samples=1)
    assert first["prospects"] == 1 and first["robinson_checked"] is False
    # The proof shows the list's checksum, which the approval quotes.
    import pypdfium2
    pdf = pypdfium2.PdfDocument(str(tmp_path / "lists" / CAMPAIGN.name / first["list_id"] / "proof.pdf"))
    text = "".join(page.get_textpage().get_text_range() for page in pdf)
    assert first["csv_sha256"][:16] in text
    approve(wh, first["list_id"], "K. Berger", first["csv_sha256"])
    with pytest.raises(ReleaseRefused, match="Robinson"):
        release(wh, first["list_id"], no_robinson, "pytest")
    # Built again with a Robinson list: a new list (the first is superseded), its own checksum.
    robinson = tmp_path / "robinson.csv"
    robinson.write_text("last_name;street;house_number;postal_code\nNiemand;Weg;1;10115\n", encoding="utf-8")
    second = record_list(wh, build_list(frame(person(1), prospect), CAMPAIGN, no_screen(), load_robinson(robinson)),
                         CAMPAIGN, "r2", tmp_path / "lists", "pytest", proof_samples=1)
    with_robinson = PrintSettings(tmp_path / "outbox", 30, tmp_path / "approvals", robinson)
    with pytest.raises(ReleaseRefused, match="changed after the proof"):
        approve(wh, second["list_id"], "K. Berger", "0" * 16)     # an approval of another list
    approve(wh, second["list_id"], "K. Berger", second["csv_sha256"])
    assert release(wh, second["list_id"], with_robinson, "pytest").exists()
    rows = wh.read_frame(sa.select(PRINT_LISTS)).set_index("list_id")
    assert rows.loc[first["list_id"], "status"] == "superseded"
    assert rows.loc[second["list_id"], "approved_csv_sha256"] == second["csv_sha256"]


def test_a_superseded_brochure_list_keeps_its_hot_leads_queued(sqlite_url, tmp_path):
    import sqlalchemy as sa

    from crm_pipelines.core.platform.schema import PRINT_QUEUE
    from crm_pipelines.core.print.rules import load_campaign

    wh = Warehouse(sqlite_url)
    from dataclasses import replace

    # A campaign of queued jobs printed as one daily list (delivery: batch).
    brochure = replace(load_campaign(DEFAULT_CONFIG_DIR / "campaigns" / "broschuere.yaml"), delivery="batch")
    settings = PrintSettings(tmp_path / "outbox", 30, tmp_path / "approvals", None)
    wh.ensure_tables([PRINT_QUEUE])
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(PRINT_QUEUE), [{"alert_key": f"sql:{i}", "golden_id": f"GC-{i:08d}", "campaign": "broschuere",
                                               "queued_at": datetime.now(timezone.utc), "status": "queued"} for i in (1, 2)])
    monday = record_list(wh, build_list(frame(person(1), person(2)), brochure, no_screen(), set()), brochure, "r1",
                         tmp_path / "lists", "pytest", proof_samples=1)
    status = dict(wh.read_select(sa.select(PRINT_QUEUE.c.golden_id, PRINT_QUEUE.c.status)).values)
    assert set(status.values()) == {"listed"}
    # Nobody released Monday's list; Tuesday's build supersedes it. The hot leads are still waiting for a brochure.
    assert {"GC-00000001", "GC-00000002"} <= set(wh.read_select(
        sa.select(PRINT_QUEUE.c.golden_id).where(PRINT_QUEUE.c.status.in_(["queued", "listed"])))["golden_id"])
    tuesday = record_list(wh, build_list(frame(person(1), person(2), person(3)), brochure, no_screen(), set()), brochure,
                          "r2", tmp_path / "lists", "pytest", proof_samples=1)
    queue = wh.read_select(sa.select(PRINT_QUEUE)).set_index("golden_id")
    assert set(queue["list_id"]) == {tuesday["list_id"]} and monday["list_id"] != tuesday["list_id"]
    approve(wh, tuesday["list_id"], "K. Berger", tuesday["csv_sha256"])
    release(wh, tuesday["list_id"], settings, "pytest")
    queue = wh.read_select(sa.select(PRINT_QUEUE)).set_index("golden_id")
    assert set(queue["status"]) == {"printed"}


def test_a_campaign_holdout_keeps_a_stable_share_out_and_records_it(sqlite_url, tmp_path):
    from dataclasses import replace

    import sqlalchemy as sa

    from crm_pipelines.core.platform.schema import PRINT_HOLDOUTS, PRINT_RECIPIENTS

    assert CAMPAIGN.holdout == 0.1      # the shipped herbst-bayern measures its Rücklaufquote
    people = frame(*[person(i, postal_code=f"{10000 + i:05d}") for i in range(1, 2001)])
    pl = build_list(people, CAMPAIGN, no_screen(), set())
    held = pl.excluded.get("holdout", 0)
    assert 150 <= held <= 250 and held == len(pl.holdout_ids)                    # about a tenth
    assert not set(pl.holdout_ids) & set(pl.golden_ids)
    assert len(pl.rows) + sum(pl.excluded.values()) == pl.audience == 2000
    assert build_list(people, CAMPAIGN, no_screen(), set()).holdout_ids == pl.holdout_ids   # the same on every run
    other = build_list(people, replace(CAMPAIGN, name="andere-kampagne"), no_screen(), set())
    assert set(other.holdout_ids) != set(pl.holdout_ids)       # not always the same people without post
    assert "holdout" not in build_list(people, replace(CAMPAIGN, holdout=0.0), no_screen(), set()).excluded

    wh = Warehouse(sqlite_url)
    doc = record_list(wh, pl, CAMPAIGN, "r1", tmp_path / "lists", "pytest", proof_samples=1)
    rows = wh.read_select(sa.select(PRINT_HOLDOUTS))
    assert set(rows["golden_id"]) == set(pl.holdout_ids) and set(rows["list_id"]) == {doc["list_id"]}
    recipients = wh.read_select(sa.select(PRINT_RECIPIENTS.c.golden_id))
    assert not set(recipients["golden_id"]) & set(pl.holdout_ids)


def test_a_holdout_is_refused_where_it_cannot_be_measured(tmp_path):
    path = tmp_path / "c.yaml"
    text = (DEFAULT_CONFIG_DIR / "campaigns" / "broschuere.yaml").read_text(encoding="utf-8")
    path.write_text(text + "\nholdout: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_campaign(path)
    assert err.value.key == "holdout" and "journey" in str(err.value)
    path.write_text((DEFAULT_CONFIG_DIR / "campaigns" / "herbst-bayern.yaml").read_text(encoding="utf-8")
                    .replace("holdout: 0.1", "holdout: 0.8"), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_campaign(path)
    assert err.value.key == "holdout"
