"""Independent check of branded messages with Python's email package (stdlib only).

Usage: check_branding.py <dir>   (the dir holds manifest.json, logo.png and the .in/.out files
written by tests/branding_fixtures.rs or tests/relay_branding.rs)

For every message: the output parses without new defects; untouched messages are identical;
HTML bodies carry the header/footer markers and text bodies the footer, as many as expected;
every `cid:logo.` reference resolves to an image part, holding the logo, inside the nearest
multipart/related around the HTML; attachments decode to the same bytes as in the input.
Prints "checked N messages" and exits 0, or prints the problems and exits 1.
"""

import json
import re
import sys
from email import policy
from email.parser import BytesParser
from pathlib import Path

HEADER = "smtp-relay-branding:header"
FOOTER = "smtp-relay-branding:footer"


def parse(data):
    return BytesParser(policy=policy.default).parsebytes(data)


def walk_with_ancestors(msg):
    """(part, ancestors) for every part, without recursion into message/rfc822 bodies."""
    stack = [(msg, [])]
    while stack:
        part, ancestors = stack.pop()
        yield part, ancestors
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            for child in reversed(part.get_payload()):
                stack.append((child, ancestors + [part]))


def defects(msg):
    out = []
    for part, _ in walk_with_ancestors(msg):
        out.extend(type(d).__name__ for d in part.defects)
    return sorted(out)


def text_of(part):
    try:
        return part.get_content()
    except (LookupError, UnicodeError, KeyError):
        return part.get_payload(decode=True).decode("utf-8", "replace")


def leaves(msg):
    return [p for p, _ in walk_with_ancestors(msg) if not p.is_multipart()]


def kept_parts(msg):
    """Attachments and non-text leaves: (type, filename, decoded bytes)."""
    out = []
    for p in leaves(msg):
        if p.is_attachment() or p.get_content_maintype() not in ("text",):
            payload = p.get_payload(decode=True)
            if payload is None:
                payload = str(p.get_payload()).encode()
            out.append((p.get_content_type(), p.get_filename(), payload))
    return out


def check(entry, root, logo):
    problems = []
    data_in = (root / entry["input"]).read_bytes()
    data_out = (root / entry["output"]).read_bytes()
    if entry["untouched"]:
        if data_in != data_out:
            problems.append("must be untouched but changed")
        return problems
    msg_in, msg_out = parse(data_in), parse(data_out)
    new_defects = [d for d in defects(msg_out) if defects(msg_out).count(d) > defects(msg_in).count(d)]
    if new_defects:
        problems.append(f"new defects: {sorted(set(new_defects))}")
    headers = footers = texts = 0
    for part, ancestors in walk_with_ancestors(msg_out):
        if part.is_multipart() or part.is_attachment():
            continue
        ctype = part.get_content_type()
        if ctype == "text/html":
            html = text_of(part)
            headers += html.count(HEADER)
            footers += html.count(FOOTER)
            for cid in re.findall(r'cid:(logo\.[^"\'\s>]+)', html):
                related = next((a for a in reversed(ancestors) if a.get_content_type() == "multipart/related"), None)
                if related is None:
                    problems.append(f"cid:{cid} used outside any multipart/related")
                    continue
                images = [p for p in related.get_payload() if (p.get("Content-ID") or "").strip() == f"<{cid}>"]
                if len(images) != 1:
                    problems.append(f"cid:{cid} resolves to {len(images)} parts in its multipart/related")
                elif images[0].get_payload(decode=True) != logo:
                    problems.append(f"cid:{cid} does not hold the logo")
                elif images[0].get_content_maintype() != "image":
                    problems.append(f"cid:{cid} is {images[0].get_content_type()}")
        elif ctype == "text/plain":
            texts += text_of(part).count(entry["text_mark"])
    if [headers, footers, texts] != entry["counts"]:
        problems.append(f"(headers, footers, texts) = {[headers, footers, texts]}, expected {entry['counts']}")
    kept_in, kept_out = kept_parts(msg_in), kept_parts(msg_out)
    for item in kept_in:
        if item not in kept_out:
            problems.append(f"attachment changed or lost: {item[0]} {item[1]}")
    added = [k for k in kept_out if k not in kept_in]
    if any(k[2] != logo for k in added):
        problems.append(f"unexpected new parts: {[(k[0], k[1]) for k in added]}")
    if entry["logo"] is False and added:
        problems.append("logo embedded although a hosted URL is configured")
    return problems


def main():
    root = Path(sys.argv[1])
    manifest = json.loads((root / "manifest.json").read_text())
    logo = (root / "logo.png").read_bytes()
    failed = 0
    for entry in manifest:
        problems = check(entry, root, logo)
        if problems:
            failed += 1
            print(f"FAIL {entry['output']}:")
            for p in problems:
                print(f"  - {p}")
    print(f"checked {len(manifest)} messages, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
