#!/usr/bin/env bash
# Runs Ray 2.60's `ray microbenchmark` and rayx's microbenchmark one after the
# other on this machine, and writes the side-by-side table to BENCHMARKS.md.
#
#   bash benches/ray/run.sh            # full run: about 15 minutes on 2 cores
#   RAYX_ONLY=1 bash benches/ray/run.sh  # reuse the last Ray output
#
# Needs python3 with venv and pip (PyPI reachable) and cargo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/target/ray-side-by-side"
venv="${RAY_VENV:-$out/venv}"
mkdir -p "$out"

if [ -z "${RAYX_ONLY:-}" ]; then
  if [ ! -x "$venv/bin/ray" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "ray==2.60.0" numpy grpcio
  fi
  echo "== Ray $("$venv/bin/python" -c 'import ray; print(ray.__version__)') microbenchmark (Ray Client metrics skipped)"
  # Ray's timeit filters by substring; the Ray Client metrics are named "client: ...".
  TESTS_TO_SKIP='client: ' "$venv/bin/ray" microbenchmark 2>&1 | tee "$out/ray.txt"
  "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
fi

echo "== rayx microbenchmark"
(cd "$root" && cargo bench --bench microbenchmark 2>/dev/null) | tee "$out/rayx.txt"

python3 "$here/table.py" "$out/ray.txt" "$out/rayx.txt" > "$out/table.md"
python3 "$here/table.py" --update "$root/BENCHMARKS.md" "$out/ray.txt" "$out/rayx.txt"
cat "$out/table.md"
