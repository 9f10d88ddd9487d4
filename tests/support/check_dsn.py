"""Reads a message on stdin and checks, with Python's email package only, that it is an
RFC 3464 delivery status notification: multipart/report; report-type=delivery-status, a
message/delivery-status part whose per-recipient block names the failed recipient and the
upstream's reply, and the original header section as text/rfc822-headers.

Usage: check_dsn.py <failed recipient> <text the Diagnostic-Code must contain> <original Message-ID>
Prints a JSON summary; exits non-zero with the reason when a check fails."""
import email
import email.policy
import json
import sys

rcpt, diagnostic, original_id = sys.argv[1], sys.argv[2], sys.argv[3]
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(1)


if msg.get_content_type() != "multipart/report":
    fail(f"content type {msg.get_content_type()}")
if msg.get_param("report-type") != "delivery-status":
    fail(f"report-type {msg.get_param('report-type')}")
if str(msg["Auto-Submitted"]).strip() != "auto-generated":
    fail(f"Auto-Submitted {msg['Auto-Submitted']}")
parts = msg.get_payload()
if [p.get_content_type() for p in parts] != [
    "text/plain",
    "message/delivery-status",
    "text/rfc822-headers",
]:
    fail(f"parts {[p.get_content_type() for p in parts]}")
human = parts[0].get_content()
if rcpt not in human:
    fail(f"human-readable part does not name {rcpt}: {human!r}")
# email parses message/delivery-status into a list of header blocks: per-message, then one
# per recipient.
blocks = parts[1].get_payload()
if len(blocks) < 2:
    fail(f"delivery-status blocks: {len(blocks)}")
per_message = blocks[0]
if not str(per_message["Reporting-MTA"]).startswith("dns;"):
    fail(f"Reporting-MTA {per_message['Reporting-MTA']}")
recipients = blocks[1:]
mine = [b for b in recipients if rcpt in str(b["Final-Recipient"])]
if not mine:
    fail(f"no block for {rcpt}: {[str(b['Final-Recipient']) for b in recipients]}")
block = mine[0]
if str(block["Action"]).strip() != "failed":
    fail(f"Action {block['Action']}")
if diagnostic not in str(block["Diagnostic-Code"]):
    fail(f"Diagnostic-Code {block['Diagnostic-Code']!r} lacks {diagnostic!r}")
headers = parts[2].get_payload()
if original_id not in headers:
    fail(f"original headers lack {original_id}: {headers!r}")
print(
    json.dumps(
        {
            "to": str(msg["To"]),
            "from": str(msg["From"]),
            "status": str(block["Status"]).strip(),
            "final_recipient": str(block["Final-Recipient"]).strip(),
            "recipients": len(recipients),
        }
    )
)
