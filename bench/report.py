#!/usr/bin/env python3
"""Turns bench/compare.sh's results.jsonl into the table of medians and ratios.

Usage: report.py results.jsonl [memory.txt]
Ratios are smtp-relay / Postfix: above 1 is better for throughput, below 1 is better for latency
and CPU. "CPU ms/msg" is the server's utime+stime per delivered message (for Postfix its whole
process tree plus OpenDKIM); the p99 of every round is printed too, not only the median.
"""
import json
import statistics
import sys
from collections import defaultdict


def med(rows, key):
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def cpu(rows):
    """Median server CPU per message; NaN for results written before the column existed."""
    vals = [r["cpu_ms_per_msg"] for r in rows if "cpu_ms_per_msg" in r]
    return statistics.median(vals) if vals else float("nan")


def rounds_p99(rows):
    return "/".join(f"{r['p99_ms']:.1f}" for r in sorted(rows, key=lambda r: r.get("round", 0)))


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["case"], r["per_conn"], r["system"])].append(r)

    print()
    print("Medians over rounds; e2e = accepted by the server and held by the sink.")
    hdr = f"{'case':<10}{'msg/conn':>9} | {'system':<11}{'e2e msg/s':>10}{'CPU ms/msg':>11}{'submit/s':>10}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}  {'p99 per round':<20} errors"
    print(hdr)
    print("-" * len(hdr))
    cases = []
    for (case, per, _system) in groups:
        if (case, per) not in cases and not case.startswith(("fsync:", "bigmsg")):
            cases.append((case, per))
    ratios = []
    for case, per in cases:
        pf = groups.get((case, per, "postfix"), [])
        rl = groups.get((case, per, "smtp-relay"), [])
        for name, rs in (("postfix", pf), ("smtp-relay", rl)):
            if not rs:
                continue
            errs = defaultdict(int)
            for r in rs:
                for k, v in r["errors"].items():
                    errs[k] += v
                if not r["complete"]:
                    errs["incomplete"] += 1
            print(
                f"{case:<10}{per:>9} | {name:<11}{med(rs, 'e2e_mps'):>10.1f}{cpu(rs):>11.3f}{med(rs, 'submit_mps'):>10.1f}"
                f"{med(rs, 'p50_ms'):>8.1f}{med(rs, 'p90_ms'):>8.1f}{med(rs, 'p99_ms'):>8.1f}{med(rs, 'max_ms'):>8.1f}"
                f"  {rounds_p99(rs):<20} {dict(errs) or '-'}"
            )
        if pf and rl:
            ratios.append(
                (case, per, med(rl, "e2e_mps") / med(pf, "e2e_mps"), med(rl, "p99_ms") / med(pf, "p99_ms"),
                 cpu(pf) / cpu(rl), len(rl))
            )
    print()
    print("smtp-relay / Postfix (throughput: higher is better; p99: lower is better);")
    print("CPU: Postfix's CPU per message / the relay's (how many times less the relay spends)")
    print(f"{'case':<10}{'msg/conn':>9} {'e2e msg/s':>10} {'p99':>7} {'CPU less':>9} rounds")
    for case, per, t, p, c, n in ratios:
        print(f"{case:<10}{per:>9} {t:>9.2f}x {p:>6.2f}x {c:>8.2f}x {n}")

    # bench/pygen.py (GENERATOR=aiosmtplib) says what it is, how many TLS sessions it resumed and
    # how much CPU it used itself: near its submit time, the generator was the bottleneck.
    gen = [r for r in rows if "generator" in r]
    if gen:
        print()
        auth = sorted({m for r in gen for m in r.get("auth", [])})
        print(f"Generator: {gen[0]['generator']}; AUTH {'/'.join(auth) or '-'}; TLS sessions resumed "
              f"{sum(r['tls_resumed'] for r in gen)} of {sum(r['tls_connections'] for r in gen)}")
        for case, per in cases:
            for name in ("postfix", "smtp-relay"):
                rs = [r for r in groups.get((case, per, name), []) if "client_cpu_ms" in r]
                if rs:
                    busy = statistics.median(r["client_cpu_ms"] / 1000 / r["submit_secs"] for r in rs)
                    per_msg = statistics.median(r["client_cpu_ms"] / max(r["accepted"], 1) for r in rs)
                    print(f"  {case:<10}{per:>3} {name:<11} generator CPU {per_msg:.3f} ms/msg, "
                          f"{busy * 100:.0f} % of one core while sending")

    fs = {k[0]: v for k, v in groups.items() if k[0].startswith("fsync:")}
    if fs:
        print()
        print("Durable ack (fsync before 250) vs no-fsync dev mode, smtp-relay, STARTTLS+AUTH, 1 msg/conn")
        for case, rs in sorted(fs.items()):
            print(f"  {case[6:]:<10} e2e {med(rs, 'e2e_mps'):8.1f} msg/s  submit {med(rs, 'submit_mps'):8.1f} msg/s  p99 {med(rs, 'p99_ms'):7.1f} ms  CPU {cpu(rs):.3f} ms/msg")
        d, n = fs.get("fsync:durable"), fs.get("fsync:no-fsync")
        if d and n and med(d, "submit_mps") > 0:
            print(f"  no-fsync / durable submit throughput: {med(n, 'submit_mps') / med(d, 'submit_mps'):.2f}x")
    big = [r for r in rows if r["case"] == "bigmsg"]
    for r in big:
        print()
        print(f"bigmsg: {r['accepted']}/{r['messages']} accepted, {r['delivered']} delivered, errors {r['errors'] or '-'}, first error {r['first_error']}")
    if len(sys.argv) > 2:
        print()
        print(open(sys.argv[2]).read().rstrip())


if __name__ == "__main__":
    main()
