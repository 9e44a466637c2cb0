"""Builds the Ray vs rayx table from the two microbenchmark outputs.

    python3 table.py RAY_OUT RAYX_OUT               # prints the markdown
    python3 table.py --update BENCHMARKS.md RAY_OUT RAYX_OUT  # rewrites its table section
"""
import datetime
import os
import platform
import re
import sys

LINE = re.compile(r"^(?P<name>.+?) per second (?P<mean>[\d.]+) \+- (?P<sd>[\d.]+)\s*$")
BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"


def parse(path):
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                out[m["name"]] = (float(m["mean"]), float(m["sd"]))
    return out


def extra_lines(path):
    """rayx lines that are not `per second` metrics (scale, not-measured notes)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip() for l in f if (l.startswith("scale:") or "not measured" in l)]


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


def table(ray_path, rayx_path):
    ray, rayx = parse(ray_path), parse(rayx_path)
    names = [n for n in rayx if not n.startswith("floor:")]
    names += [n for n in ray if n not in rayx and not n.startswith("client:")]
    rows = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}.",
        "",
        "| metric | Ray 2.60 | rayx | rayx/Ray |",
        "|---|---:|---:|---:|",
    ]
    for n in names:
        r, x = ray.get(n), rayx.get(n)
        rs = f"{fmt(r[0])} ± {fmt(r[1])}" if r else "—"
        xs = f"{fmt(x[0])} ± {fmt(x[1])}" if x else "not measured"
        ratio = "—"
        if r and x and r[0] > 0:
            q = x[0] / r[0]
            ratio = f"{q:,.0f}×" if q >= 10 else f"{q:.2f}×"
        rows.append(f"| {n} | {rs} | {xs} | {ratio} |")
    floor = [n for n in rayx if n.startswith("floor:")]
    if floor:
        rows += ["", "The floor, measured in the same rayx run:", "", "| what | per second |", "|---|---:|"]
        rows += [f"| {n[len('floor: '):]} | {fmt(rayx[n][0])} ± {fmt(rayx[n][1])} |" for n in floor]
    extra = extra_lines(rayx_path)
    if extra:
        rows += ["", "Scale, from the same rayx run:", ""] + [f"- {l}" for l in extra]
    return "\n".join(rows) + "\n"


def main(argv):
    if argv and argv[0] == "--update":
        doc, ray_path, rayx_path = argv[1:4]
        text = open(doc).read() if os.path.exists(doc) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
        if BEGIN not in text:
            text += f"\n{BEGIN}\n{END}\n"
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(doc, "w") as f:
            f.write(head + BEGIN + "\n" + table(ray_path, rayx_path) + END + tail)
    else:
        sys.stdout.write(table(*argv[:2]))


if __name__ == "__main__":
    main(sys.argv[1:])
