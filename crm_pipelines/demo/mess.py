"""The mess of real data: per-source faults (typos, transliterations, legal-form variants, phone notations,
changed e-mail domains) and the positions of records malformed on purpose."""

from __future__ import annotations

import random

from . import places as P
from .world import FORM_VARIANTS, NEIGHBOUR_KEYS, World, translit


class Mess:
    """Per-source random faults. Each source has its own stream so sources are independent."""

    def __init__(self, seed: int, source: str):
        self.r = random.Random(f"{seed}:{source}")

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def pick(self, seq):
        return seq[self.r.randrange(len(seq))]

    def typo(self, s: str) -> str:
        if len(s) < 4:
            return s
        i = self.r.randrange(1, len(s) - 1)
        op = self.r.randrange(4)
        if op == 0:
            return s[:i] + s[i + 1] + s[i] + s[i + 2:]
        if op == 1:
            return s[:i] + s[i + 1:]
        if op == 2:
            return s[:i] + s[i] + s[i:]
        c = s[i].lower()
        return s[:i] + NEIGHBOUR_KEYS.get(c, c) + s[i + 1:]

    def name(self, s: str, p_translit: float = 0.1, p_typo: float = 0.02) -> str:
        if self.chance(p_translit):
            s = translit(s)
        if self.chance(p_typo):
            s = self.typo(s)
        return s

    def company(self, world: World, c: int, p_variant: float = 0.25) -> str:
        base, form = world.c_base[c], world.c_form[c]
        if self.chance(0.08):
            base = translit(base)
        if self.chance(0.02):
            base = self.typo(base)
        if self.chance(p_variant):
            form = self.pick(FORM_VARIANTS.get(form, ("",)))
        if self.chance(0.03):
            base = base.upper()
        return f"{base} {form}".strip()

    def street(self, s: str) -> str:
        if "straße" in s and self.chance(0.3):
            return s.replace("straße", self.pick(("str.", "strasse", "Str.")))
        if "Straße" in s and self.chance(0.3):
            return s.replace("Straße", self.pick(("Str.", "Strasse")))
        return s

    def phone(self, country: str, area: str, number: str, ext: str | None = None) -> str:
        cc = P.COUNTRY_CALLING[country]
        tail = f"{number}{ext or ''}"
        style = self.r.randrange(7)
        if style == 0:
            return f"+{cc} {area} {tail}"
        if style == 1:
            return f"0{area}/{number}" + (f"-{ext}" if ext else "")
        if style == 2:
            return f"0{area} {number}" + (f"-{ext}" if ext else "")
        if style == 3:
            return f"00{cc} (0){area} {tail}"
        if style == 4:
            return f"+{cc}{area}{tail}"
        if style == 5:
            return f"(0{area}) {number} {ext or ''}".strip()
        return f"0{area}-{tail}"

    def email(self, world: World, i: int) -> str:
        e = world.p_email[i]
        if self.chance(0.03):  # changed domain: company renamed, or the private address
            local, _, dom = e.partition("@")
            if self.chance(0.5):
                return f"{local}@{self.pick(P.FREE_MAIL)}"
            return f"{local}@{dom.split('.')[0]}-group.com"
        if self.chance(0.02):
            return e.upper() if self.chance(0.5) else f"  {e} "
        return e


def malformed_positions(mess: Mess, total: int, rate: float) -> set[int]:
    if total < 20 or rate <= 0:
        return set()
    k = max(1, round(total * rate))
    return set(mess.r.sample(range(total), k))
