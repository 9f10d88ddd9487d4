#!/usr/bin/env python3
"""Sends messages the way a Python app does: smtplib.sendmail(from, to, msg.as_bytes()).

as_bytes() uses LF line ends and smtplib sends bytes as they are (it fixes line ends only for
str), dot-stuffing with its own regex and appending CRLF.CRLF. The relay must take that.

Usage: smtplib_send.py PORT CA_FILE USER TOKEN FROM TO
Prints one line per message sent: the base64 of the exact bytes given to sendmail.
"""

import base64
import os
import smtplib
import ssl
import sys
from email.message import EmailMessage


def messages(sender, rcpt):
    small = EmailMessage()
    small["From"] = f"App <{sender}>"
    small["To"] = rcpt
    small["Subject"] = "LF line ends from smtplib"
    small["Date"] = "Wed, 02 Dec 2026 20:00:00 +0000"
    small["Message-ID"] = "<lf-small@a.test>"
    body = "".join(
        [
            "first line\n",
            ".\n",  # a lone dot: smtplib stuffs it, so it is content
            "..\n",
            ".leading dot\n",
            "x" * 998 + "\n",  # the longest line allowed, once normalised to CRLF
            "last line\n",
        ]
    )
    small.set_content(body, cte="8bit")
    yield small

    # Over 256 KiB: the relay spills it to a file while it arrives.
    large = EmailMessage()
    large["From"] = f"App <{sender}>"
    large["To"] = rcpt
    large["Subject"] = "large, LF line ends"
    large["Date"] = "Wed, 02 Dec 2026 20:00:01 +0000"
    large["Message-ID"] = "<lf-large@a.test>"
    large.set_content("see attachment\n.\nend\n", cte="8bit")
    large.add_attachment(
        os.urandom(400 * 1024),
        maintype="application",
        subtype="octet-stream",
        filename="blob.bin",
    )
    yield large


def main():
    port, ca, user, token, sender, rcpt = sys.argv[1:7]
    ctx = ssl.create_default_context(cafile=ca)
    with smtplib.SMTP("localhost", int(port), timeout=30) as s:
        s.starttls(context=ctx)
        s.login(user, token)
        for m in messages(sender, rcpt):
            raw = m.as_bytes()
            assert b"\r" not in raw, "as_bytes() is expected to use bare LF"
            refused = s.sendmail(sender, [rcpt], raw)
            assert not refused, refused
            print(base64.b64encode(raw).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
