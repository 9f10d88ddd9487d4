#!/usr/bin/env python3
"""An independent load generator: Python asyncio + aiosmtplib (compare.sh GENERATOR=aiosmtplib).

It sends what examples/loadgen.rs `run` sends, through a different SMTP and TLS stack, so the
CPU-per-message ratio of smtp-relay and Postfix can be checked against a generator we did not
write. N client tasks take message numbers from a shared counter until M are taken (or
--max-secs passed); each connection: connect, EHLO, STARTTLS + EHLO (--mode starttls) or implicit
TLS (--mode implicit), AUTH (the method aiosmtplib prefers among those offered: PLAIN for both
servers here), then --per-conn messages of MAIL / RCPT / DATA (aiosmtplib does not pipeline),
QUIT. The certificate is verified against --ca (the host of --addr: 127.0.0.1, in the bench
certificate's names).

TLS: one ssl.SSLContext for every connection. Python's ssl module resumes a session only when it
is handed one (SSLSocket.session), and asyncio's start_tls/create_connection take none, so every
connection makes a full handshake; `tls_resumed` in the output counts the ones that did resume
(0 expected). Comparable loadgen runs: NO_RESUME=1.

The sink: with --sink ADDR, runs `<--loadgen> sink --listen ADDR --token T` (the sink of loadgen
`run --sink`, same code, in its own process), writes the accepted count to its stdin when the
load is done, and waits for its JSON line (the count of messages with this run's token and when
the last arrived). Prints one JSON line with the keys of loadgen `run` (read by bench/compare.sh
and bench/report.py), plus generator, tls_connections, tls_resumed, auth (the SASL mechanisms
used) and client_cpu_ms (this process's utime+stime: near the submit time means the generator
was the bottleneck).

Needs aiosmtplib (bench/compare.sh installs the pinned version into target/bench-venv).
"""
import argparse
import asyncio
import json
import os
import resource
import ssl
import subprocess
import sys
import time

import aiosmtplib


def make_body(size, header_len):
    """The body of loadgen's make_body: 76-character lines up to the requested size."""
    want = max(size - header_len, 2)
    line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n"
    body = line * (want // len(line))
    if len(body) < want:
        rest = want - len(body)
        if rest >= 3:
            body += b"x" * (rest - 2)
        body += b"\r\n"
    return body


def failure(exc):
    """(key, description) of a failed message, keyed like loadgen: a reply code, io or timeout."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return str(exc.recipients[0].code), text
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return str(exc.code), text
    if isinstance(exc, (aiosmtplib.SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return "timeout", text
    return "io", text


class Run:
    def __init__(self, args, token):
        self.args = args
        self.host, port = args.addr.rsplit(":", 1)
        self.host = self.host.strip("[]")
        self.port = int(port)
        self.token = token
        self.tls = None
        if args.mode != "plain":
            self.tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
        self.body = make_body(args.size, len(self.headers(args.messages)))
        self.next = 0
        self.accepted = 0
        self.bytes_out = 0
        self.latencies = []  # microseconds, like loadgen
        self.failures = {}
        self.first_failure = None
        self.tls_connections = 0
        self.tls_resumed = 0
        self.auth_methods = set()  # the mechanism aiosmtplib picked (its first of the offered ones)
        self.deadline = None

    def headers(self, n):
        a = self.args
        return (
            f"From: Bench <{a.sender}>\r\nTo: <{a.to}>\r\nSubject: bench message {n}\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{n}.{self.token}@bench.example>\r\n"
            f"X-Bench-Run: {self.token}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()

    def take(self):
        """The next message number, or None when all are taken or time is up."""
        if time.monotonic() >= self.deadline:
            return None
        n = self.next
        self.next += 1
        return n if n < self.args.messages else None

    def fail(self, exc):
        key, text = failure(exc)
        self.failures[key] = self.failures.get(key, 0) + 1
        if self.first_failure is None:
            self.first_failure = text

    async def client(self):
        a = self.args
        while (num := self.take()) is not None:
            started = time.perf_counter()
            smtp = aiosmtplib.SMTP(
                hostname=self.host,
                port=self.port,
                use_tls=a.mode == "implicit",
                start_tls=a.mode == "starttls",
                tls_context=self.tls,
                local_hostname="pygen.bench",
                timeout=a.step_secs,
            )
            try:
                await smtp.connect()
                if a.user is not None:
                    await smtp.login(a.user, a.password)
                    self.auth_methods.add(smtp.supported_auth_methods[0].upper())
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none is fatal
                self.fail(exc)
                smtp.close()
                continue
            tls = smtp.get_transport_info("ssl_object")
            if tls is not None:
                self.tls_connections += 1
                self.tls_resumed += bool(tls.session_reused)
            t0, sent = started, 0
            while num is not None:
                message = self.headers(num) + self.body
                try:
                    await smtp.sendmail(a.sender, [a.to], message)
                except Exception as exc:  # noqa: BLE001
                    # The session state is unknown after a failure: start a new connection.
                    self.fail(exc)
                    break
                self.latencies.append(int((time.perf_counter() - t0) * 1e6))
                self.accepted += 1
                self.bytes_out += len(message)
                sent += 1
                if sent >= a.per_conn:
                    break
                num = self.take()
                t0 = time.perf_counter()
            try:
                await smtp.quit()
            except Exception:  # noqa: BLE001 - the messages are in; a failed QUIT changes nothing
                pass
            smtp.close()


def percentile(sorted_us, p):
    """loadgen's percentile: the nearest rank (rounded half up), in ms."""
    if not sorted_us:
        return 0.0
    idx = int(p / 100.0 * (len(sorted_us) - 1) + 0.5)
    return sorted_us[min(idx, len(sorted_us) - 1)] / 1000.0


def start_sink(args, token):
    cmd = [args.loadgen, "sink", "--listen", args.sink, "--token", token]
    cmd += ["--max-secs", str(args.max_secs)]
    sink = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if sink.stdout.readline().strip() != "ready":
        sink.kill()
        sink.wait()
        sys.exit(f"pygen: the sink ({' '.join(cmd)}) did not start (a loadgen without sink --token?)")
    return sink


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", required=True, help="submission server, host:port")
    ap.add_argument("--mode", choices=["plain", "starttls", "implicit"], default="starttls")
    ap.add_argument("--ca", help="PEM file of the CA the server's certificate chains to")
    ap.add_argument("--user", help="AUTH username; no AUTH when absent")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096, help="message size in bytes (headers included)")
    ap.add_argument("--per-conn", type=int, default=1, help="messages per connection")
    ap.add_argument("--from", dest="sender", default="bench@bench.example")
    ap.add_argument("--to", default="rcpt@sink.example")
    ap.add_argument("--sink", help="run loadgen's counting sink here; wait until it holds every accepted message")
    ap.add_argument("--loadgen", default="target/release/examples/loadgen", help="loadgen binary (for --sink)")
    ap.add_argument("--max-secs", type=int, default=300, help="give up (report what was done) after this long")
    ap.add_argument("--step-secs", type=int, default=60, help="per-command timeout")
    ap.add_argument("--label", default="", help="label copied into the JSON line")
    args = ap.parse_args()
    args.per_conn = max(args.per_conn, 1)
    args.password = os.environ.get("LOADGEN_PASS")
    if args.user is not None and args.password is None:
        sys.exit("pygen: --user needs the password in LOADGEN_PASS")

    token = f"run{os.getpid():x}{time.time_ns():x}"
    run = Run(args, token)
    sink = start_sink(args, token) if args.sink else None
    try:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started, started_unix = time.monotonic(), time.time()
        run.deadline = started + args.max_secs

        async def load():
            await asyncio.gather(*(run.client() for _ in range(args.clients)))

        asyncio.run(load())
        submit_secs = time.monotonic() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        delivered, e2e_secs, other = run.accepted, submit_secs, 0
        if sink is not None:
            sink.stdin.write(f"{run.accepted}\n")
            sink.stdin.close()
            got = json.loads(sink.stdout.readline())
            sink.wait()
            sink = None
            delivered, other = got["matched"], got["other"]
            if got["last_unix"] is not None:
                e2e_secs = max(got["last_unix"] - started_unix, submit_secs)
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()

    lat = sorted(run.latencies)
    client_cpu_ms = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) * 1000
    result = {
        "label": args.label,
        "clients": args.clients,
        "messages": args.messages,
        "size": args.size,
        "per_conn": args.per_conn,
        "accepted": run.accepted,
        "delivered": delivered,
        "complete": delivered >= args.messages,
        "submit_secs": submit_secs,
        "e2e_secs": e2e_secs,
        "submit_mps": run.accepted / submit_secs,
        "e2e_mps": delivered / e2e_secs,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] / 1000.0 if lat else 0.0,
        "errors": dict(sorted(run.failures.items())),
        "first_error": run.first_failure,
        "sink_other": other,
        "generator": f"aiosmtplib {aiosmtplib.__version__}, Python {sys.version.split()[0]}, "
        f"{ssl.OPENSSL_VERSION}",
        "tls_connections": run.tls_connections,
        "tls_resumed": run.tls_resumed,
        "auth": sorted(run.auth_methods),
        "client_cpu_ms": client_cpu_ms,
    }
    print(
        f"{args.label}: {run.accepted}/{args.messages} accepted, {delivered} delivered; "
        f"submit {result['submit_mps']:.1f} msg/s, end-to-end {result['e2e_mps']:.1f} msg/s; "
        f"latency ms p50 {result['p50_ms']:.2f} p90 {result['p90_ms']:.2f} p99 {result['p99_ms']:.2f} "
        f"max {result['max_ms']:.2f}; errors {run.failures}; TLS resumed {run.tls_resumed}/{run.tls_connections}; "
        f"generator CPU {client_cpu_ms / 1000:.2f} s in {submit_secs:.2f} s",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
