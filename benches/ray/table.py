"""Builds the tables of BENCHMARKS.md from the raw outputs of one run.

    python3 table.py RAY_OUT RAYX_OUT [PEERS_OUT]               # prints the markdown
    python3 table.py --update BENCHMARKS.md RAY_OUT RAYX_OUT [PEERS_OUT]  # rewrites its table section
    python3 table.py --cluster RAY_OUT CLUSTER_OUT              # the cluster-mode table
    python3 table.py --update-cluster BENCHMARKS.md RAY_OUT CLUSTER_OUT

RAY_OUT is benches/ray/ray_bench.py's output, RAYX_OUT the microbenchmark's,
PEERS_OUT benches/peers.rs's.
"""
import datetime
import os
import platform
import re
import sys

LINE = re.compile(
    r"^(?P<name>.+?) per second (?P<mean>[\d.]+) \+- (?P<sd>[\d.]+)(?: cpu (?P<cpu>-?[\d.]+) us/op)?(?: node cpu (?P<ncpu>[\d.]+) us/op)?\s*$"
)
CPU_LINE = re.compile(r"^(?P<name>cpu: [^:]+): (?P<value>[\d.]+) (?P<unit>us of CPU per \w+)")
BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"
CBEGIN, CEND = "<!-- cluster:begin -->", "<!-- cluster:end -->"
# Issue 9's bar in cluster mode: 10x Ray everywhere, 50x on the batched metrics.
BATCHED = ("single client tasks async", "1:1 actor calls async", "single client put calls (Plasma Store)",
           "single client get calls (Plasma Store)")


def lines(path):
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip("\n") for l in f]


def parse(path, nodes=False):
    """name -> (mean, sd, cpu us/op or None); with `nodes`, and the node
    processes' cpu us/op or None (cluster mode)."""
    out = {}
    for line in lines(path):
        m = LINE.match(line.strip())
        if m:
            cpu = float(m["cpu"]) if m["cpu"] else None
            # Ray's CPU reading sums its processes' CPU before and after a
            # metric; a worker that exits in between takes its share along,
            # which can leave the difference negative: no measure, shown "—".
            if cpu is not None and cpu < 0:
                cpu = None
            row = (float(m["mean"]), float(m["sd"]), cpu)
            if nodes:
                row += (float(m["ncpu"]) if m["ncpu"] else None,)
            out[m["name"]] = row
    return out


def cpu_lines(path):
    out = {}
    for line in lines(path):
        m = CPU_LINE.match(line.strip())
        if m:
            out[m["name"]] = (float(m["value"]), m["unit"])
    return out


def prefixed(path, prefix):
    return [l for l in lines(path) if l.startswith(prefix)]


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores, {cpu}, {mem} RAM, {platform.system()} {platform.release()}"


def fmt(x):
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def fcpu(x):
    if x is None:
        return "—"
    return f"{x:,.3f}" if x < 10 else f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def ratio(a, b):
    if not a or not b:
        return "—"
    q = a / b
    return f"{q:,.0f}×" if q >= 10 else f"{q:.2f}×"


def table(ray_path, rayx_path, peers_path=None):
    ray, rayx = parse(ray_path), parse(rayx_path)
    names = [n for n in rayx if not n.startswith("floor:")]
    names += [n for n in ray if n not in rayx and not n.startswith("client:")]
    rows = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}.",
        "CPU is the CPU time per operation of every process of the system "
        "(rayx: its one process; Ray: the driver, GCS, raylet, workers and agents), "
        "user + system, over the timed runs.",
        "",
        "| metric | Ray 2.60 per s | Ray CPU µs/op | rayx per s | rayx CPU µs/op | rayx/Ray |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        r, x = ray.get(n), rayx.get(n)
        rs = f"{fmt(r[0])} ± {fmt(r[1])}" if r else "—"
        xs = f"{fmt(x[0])} ± {fmt(x[1])}" if x else "not measured"
        rows.append(
            f"| {n} | {rs} | {fcpu(r[2]) if r else '—'} | {xs} | {fcpu(x[2]) if x else '—'} "
            f"| {ratio(x and x[0], r and r[0])} |"
        )

    floor = [n for n in rayx if n.startswith("floor:")]
    if floor:
        rows += [
            "",
            "The floor, measured in the same rayx run, and rayx's overhead over it "
            "(time per call of the rayx metric minus the floor's, per call):",
            "",
            "| floor | per second | CPU µs/op | rayx beside it | rayx per s | overhead per call |",
            "|---|---:|---:|---|---:|---:|",
        ]
        beside = {
            "round trip": "1:1 actor calls sync",
            "batch of 1000": "1:1 actor calls async",
        }
        for n in floor:
            f = rayx[n]
            match = next((m for k, m in beside.items() if k in n), None)
            if match and match in rayx:
                over = 1e6 / rayx[match][0] - 1e6 / f[0]
                extra = f"| {match} | {fmt(rayx[match][0])} | {over:+.2f} µs |"
            else:
                extra = "| — | — | — |"
            rows.append(f"| {n[len('floor: '):]} | {fmt(f[0])} ± {fmt(f[1])} | {fcpu(f[2])} {extra}")

    rc, xc = cpu_lines(ray_path), cpu_lines(rayx_path)
    if rc or xc:
        rows += [
            "",
            "CPU at idle and under light traffic (3 s each; one call is made and got, "
            "then the caller sleeps to the next 5 ms tick):",
            "",
            "| what | Ray 2.60 | rayx |",
            "|---|---:|---:|",
        ]
        for n in list(xc) + [n for n in rc if n not in xc]:
            unit = (xc.get(n) or rc.get(n))[1]
            r = f"{fmt(rc[n][0])}" if n in rc else "—"
            x = f"{fmt(xc[n][0])}" if n in xc else "—"
            rows.append(f"| {n[len('cpu: '):]} ({unit.replace('us', 'µs')}) | {r} | {x} |")

    rs, xs = prefixed(ray_path, "scale:"), prefixed(rayx_path, "scale:")
    if rs or xs:
        rows += ["", "Scale (the first line is the same shape for both systems):", ""]
        rows += [f"- Ray 2.60: {l}" for l in rs] + [f"- rayx: {l}" for l in xs]

    peers = [l.split(" | ") for l in prefixed(peers_path, "peer | ")]
    if peers:
        head = next((l for l in lines(peers_path) if l.startswith("# rayx and its peers")), "")
        rows += [
            "",
            f"rayx and the libraries a Rust user would pick instead ({head.lstrip('# ')}; "
            "spread = slowest..fastest run; CPU = process CPU per operation; "
            "efficiency = the work's serial time / (cores × wall time)):",
        ]
        by_workload = {}
        for p in peers:
            _, w, lib, med, spread, cpu, eff = (x.strip() for x in p)
            by_workload.setdefault(w, []).append((lib, med, spread, cpu, eff))
        for w, libs in by_workload.items():
            tasks = any(eff != "-" for *_, eff in libs)
            rows += ["", f"**{w}**", ""]
            rows += (["| library | median per s | spread | CPU µs/op | efficiency |", "|---|---:|---:|---:|---:|"]
                     if tasks else ["| library | median per s | spread | CPU µs/op |", "|---|---:|---:|---:|"])
            for lib, med, spread, cpu, eff in libs:
                lo, hi = spread.split("..")
                row = f"| {lib} | {fmt(float(med))} | {fmt(float(lo))}..{fmt(float(hi))} | {cpu} |"
                rows.append(row + (f" {eff} |" if tasks else ""))
    return "\n".join(rows) + "\n"


def cluster_table(ray_path, cluster_path):
    ray, rayx = parse(ray_path), parse(cluster_path, nodes=True)
    rows = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}: rayx's driver in one process, "
        "every task and actor in a node process on loopback (`cargo bench --bench microbenchmark -- --cluster`); "
        "Ray's numbers are its own, cross-process as always (same day, same machine). "
        "CPU per operation: rayx's driver process, and the driver and node processes together; "
        "Ray's: every process of its system.",
        "",
        "| metric | Ray 2.60 per s | Ray CPU µs/op | rayx cluster per s | rayx driver CPU µs/op "
        "| rayx driver + node CPU µs/op | rayx/Ray | bar |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, (mean, _, cpu, ncpu) in rayx.items():
        if name.startswith("floor:") or name not in ray:
            continue
        r, rcpu = ray[name][0], ray[name][2]
        total = cpu + ncpu if cpu is not None and ncpu is not None else None
        bar = 50 if name in BATCHED else 10
        met = "met" if mean >= bar * r else "**missed**"
        rows.append(
            f"| {name} | {fmt(r)} | {fcpu(rcpu)} | {fmt(mean)} | {fcpu(cpu)} | {fcpu(total)} "
            f"| {ratio(mean, r)} | {bar}×: {met} |"
        )
    extra = [l for l in lines(cluster_path) if l.startswith(("cpu:", "transfer", "100000 tasks", "10000 tasks"))]
    if extra:
        rows += ["", "```"] + extra + ["```"]
    return "\n".join(rows) + "\n"


def update(doc, begin, end, body):
    text = open(doc).read() if os.path.exists(doc) else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(doc, "w") as f:
        f.write(head + begin + "\n" + body + end + tail)


def main(argv):
    if argv and argv[0] == "--cluster":
        sys.stdout.write(cluster_table(*argv[1:]))
        return
    if argv and argv[0] == "--update-cluster":
        update(argv[1], CBEGIN, CEND, cluster_table(*argv[2:]))
        return
    if argv and argv[0] == "--update":
        update(argv[1], BEGIN, END, table(*argv[2:]))
    else:
        sys.stdout.write(table(*argv))


if __name__ == "__main__":
    main(sys.argv[1:])
