"""Independent check of a message built by the HTTP send API, with Python's email package.

Usage: check_send_api.py <message.eml> <expect.json>

expect.json: {"from": [name, addr], "to": [addr…], "cc": [addr…], "reply_to": [addr…],
"subject": str, "text": str, "html": str, "headers": {name: value},
"attachments": [[filename, content_type, base64]], "absent": [header…]}
Checks: parses without defects in any part; Message-ID and Date present and well-formed;
each expected header, body and attachment; absent headers absent. Prints "ok" and exits 0,
or prints the problems and exits 1.
"""

import base64
import json
import sys
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses, parseaddr, parsedate_to_datetime


def main():
    raw = open(sys.argv[1], "rb").read()
    want = json.load(open(sys.argv[2]))
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    problems = []
    for part in msg.walk():
        for d in part.defects:
            problems.append(f"defect in {part.get_content_type()}: {d!r}")
        for name, value in part.items():
            for d in getattr(value, "defects", ()):
                problems.append(f"defect in header {name}: {d!r}")
    mid = msg.get("Message-ID")
    if not mid or not (str(mid).startswith("<") and str(mid).endswith(">") and "@" in str(mid)):
        problems.append(f"bad Message-ID: {mid!r}")
    try:
        parsedate_to_datetime(str(msg["Date"]))
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        problems.append(f"bad Date {msg['Date']!r}: {e}")
    if msg.get("MIME-Version") != "1.0":
        problems.append(f"MIME-Version {msg.get('MIME-Version')!r}")
    name, addr = parseaddr(str(msg["From"]))
    if [name, addr] != want["from"]:
        problems.append(f"From {name!r} {addr!r}, wanted {want['from']}")
    for field, key in (("To", "to"), ("Cc", "cc"), ("Reply-To", "reply_to")):
        got = [a for _, a in getaddresses([str(v) for v in msg.get_all(field, [])])]
        if got != want.get(key, []):
            problems.append(f"{field} {got}, wanted {want.get(key, [])}")
    if str(msg["Subject"]) != want["subject"]:
        problems.append(f"Subject {str(msg['Subject'])!r}, wanted {want['subject']!r}")
    for k, v in want.get("headers", {}).items():
        if str(msg.get(k)) != v:
            problems.append(f"header {k}: {msg.get(k)!r}, wanted {v!r}")
    for k in want.get("absent", []):
        if k in msg:
            problems.append(f"header {k} present: {msg[k]!r}")
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    if text is None or want["text"] not in text.get_content():
        problems.append(f"text body: {text and text.get_content()!r}")
    if html is None or want["html"] not in html.get_content():
        problems.append(f"html body: {html and html.get_content()!r}")
    atts = [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True))
            for p in msg.iter_attachments()]
    wanted = [(f, t, base64.b64decode(b)) for f, t, b in want.get("attachments", [])]
    if atts != wanted:
        problems.append(f"attachments {[(f, t, len(b or b'')) for f, t, b in atts]}, "
                        f"wanted {[(f, t, len(b)) for f, t, b in wanted]}")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print("ok")


main()
