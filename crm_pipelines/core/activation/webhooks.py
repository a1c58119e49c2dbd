"""The marketing tool's webhooks become landing files of the source ``email_engagement``.

Brevo signs nothing, so the endpoint is protected by a token in its URL (``?token=``), compared in
constant time. Each request becomes one landing file, written under a temporary name and renamed, so
the landing sensor never reads half a file; each event gets a ``receipt_id``, the SHA-256 of its
payload, so the tool's retries of one event load once. The file holds the payload as it came: the
source's mapping, quarantine and balance rules apply to it like to every other delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import datetime, timezone
from pathlib import Path

SOURCE = "email_engagement"


def token_ok(given: str | None, expected: str) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(given.encode(), expected.encode())


def receipt_id(event: dict) -> str:
    return hashlib.sha256(json.dumps(event, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def land_events(landing_root: str | Path, payload, now: datetime | None = None) -> Path | None:
    """Writes one request's events (an object, or a list when the webhook is batched) as a landing file;
    None when there is nothing to write. Anything that is not an object lands all the same (as a line of
    its own), so the load quarantines it with its reason instead of it vanishing here."""
    events = payload if isinstance(payload, list) else [payload]
    if not events:
        return None
    now = now or datetime.now(timezone.utc)
    lines = []
    for ev in events:
        if isinstance(ev, dict):
            ev = {"receipt_id": receipt_id(ev), **ev, "received_at": now.isoformat()}
        lines.append(json.dumps(ev, ensure_ascii=False))
    body = ("\n".join(lines) + "\n").encode("utf-8")
    day = now.astimezone(timezone.utc).strftime("%Y-%m-%d")
    folder = Path(landing_root) / SOURCE / day
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{now.strftime('%H%M%S%f')}_{hashlib.sha256(body).hexdigest()[:12]}.jsonl"
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(body)
    os.replace(tmp, folder / name)
    return folder / name
