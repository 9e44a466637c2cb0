#!/usr/bin/env bash
# Runs Ray 2.60's `ray microbenchmark` and rayx's microbenchmark one after the
# other on this machine, and writes the side-by-side table to BENCHMARKS.md.
#
#   bash benches/ray/run.sh            # full run: about 30 minutes on 2 cores
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
    "$venv/bin/pip" install --quiet "ray==2.60.0" numpy grpcio psutil
  fi

  echo "== Ray $("$venv/bin/python" -c 'import ray; print(ray.__version__)') microbenchmark (Ray Client metrics skipped), with CPU per operation"
  # Ray's own metrics (ray_perf.main), its timeit wrapped to read the CPU of
  # every Ray process; then idle/light-traffic CPU and the scale line.
  # The Ray Client metrics are named "client: ...".
  TESTS_TO_SKIP='client: ' "$venv/bin/python" "$here/ray_bench.py" 2>&1 | tee "$out/ray.txt"
  "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
fi

echo "== rayx microbenchmark"
(cd "$root" && cargo bench --bench microbenchmark 2>/dev/null) | tee "$out/rayx.txt"
echo "== rayx microbenchmark in cluster mode (a driver and a node process on loopback)"
(cd "$root" && cargo bench --bench microbenchmark -- --cluster 2>/dev/null) | tee "$out/cluster.txt"
echo "== rayx and its peers (rayon, tokio, ractor, kameo, actix)"
(cd "$root" && cargo bench --bench peers 2>/dev/null) | tee "$out/peers.txt"

# The raw outputs of this run, committed beside the table they make.
day=$(date +%F)
results="$root/benches/results"
mkdir -p "$results"
[ -s "$out/ray.txt" ] && cp "$out/ray.txt" "$results/$day-ray.txt"
cp "$out/rayx.txt" "$results/$day-rayx.txt"
cp "$out/peers.txt" "$results/$day-peers.txt"
cp "$out/cluster.txt" "$results/$day-cluster.txt"

python3 "$here/table.py" "$out/ray.txt" "$out/rayx.txt" "$out/peers.txt" > "$out/table.md"
python3 "$here/table.py" --update "$root/BENCHMARKS.md" "$out/ray.txt" "$out/rayx.txt" "$out/peers.txt"
python3 "$here/table.py" --update-cluster "$root/BENCHMARKS.md" "$out/ray.txt" "$out/cluster.txt"
cat "$out/table.md"
