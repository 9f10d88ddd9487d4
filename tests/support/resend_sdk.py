"""Sends through the relay's HTTP send API with Resend's official Python SDK (`pip install
resend`), pointed at the relay by its base-URL setting (RESEND_API_URL) — nothing else changed.

Usage: RESEND_API_URL=http://127.0.0.1:PORT RESEND_API_KEY=smtpr_… resend_sdk.py <from> <to>
Prints one JSON line: {"id": …, "batch": [ids…], "bad_key": {"code": …, "type": …},
"idem": [id, id], "idem_conflict": {"code": …, "type": …}}.
"""

import json
import sys

try:
    import resend
except ImportError:
    print("the resend Python package is missing: pip install resend (scripts/test.sh does)")
    sys.exit(2)

sender, to = sys.argv[1], sys.argv[2]
sent = resend.Emails.send({
    "from": f"Python SDK <{sender}>",
    "to": [to],
    "subject": "Hello from the resend Python SDK",
    "html": "<p>Sent with <strong>resend-python</strong>.</p>",
    "text": "Sent with resend-python.",
    "headers": {"X-Entity-Ref-ID": "py-1"},
    "attachments": [{"filename": "note.txt", "content": list(b"attached bytes\n")}],
    "tags": [{"name": "sdk", "value": "python"}],
})
batch = resend.Batch.send([
    {"from": sender, "to": [to], "subject": "batch 1", "text": "one"},
    {"from": sender, "to": [to], "subject": "batch 2", "text": "two"},
])
# The SDK's idempotency option: a retry gets the first id; another payload with it is refused.
reset = {"from": sender, "to": [to], "subject": "reset", "text": "code 4711"}
idem = [resend.Emails.send(reset, {"idempotency_key": "py/reset-1"})["id"] for _ in range(2)]
conflict = {}
try:
    resend.Emails.send(dict(reset, text="code 4712"), {"idempotency_key": "py/reset-1"})
except resend.exceptions.ResendError as e:
    conflict = {"code": e.code, "type": e.error_type}
bad = {}
resend.api_key = "smtpr_not-a-real-token"
try:
    resend.Emails.send({"from": sender, "to": [to], "subject": "x", "text": "x"})
except resend.exceptions.ResendError as e:
    bad = {"code": e.code, "type": e.error_type}
print(json.dumps({"id": sent["id"], "batch": [d["id"] for d in batch["data"]], "bad_key": bad,
                  "idem": idem, "idem_conflict": conflict}))
