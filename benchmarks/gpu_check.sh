#!/usr/bin/env bash
# GPU check of the fast backends (issue 4), one script, < 6 minutes on one H100/H200:
#   1. the GPU test subset (pytest -m gpu) and the backend matrix + dispatch tests on CUDA
#      (bf16 and FlexAttention cases run only there);
#   2. a pytest-free equivalence spot check (fast backends vs the edge backend, fp32 and bf16);
#   3. the benchmark: P1-P5 in fp32 (with torch.compile'd PyG), then P1-P2 in bf16.
# Everything goes under $OUT: env.txt, tests.log, spot_check.log, bench_fp32.{log,md,json},
# bench_bf16.{log,md,json}, summary.txt (files are rewritten after each case, so a step cut
# short by its timeout keeps what it measured). The step timeouts add up to about 6 minutes.
# Needs no network: it uses the installed torch and torch_geometric and puts the repository on
# PYTHONPATH.
# Without CUDA it runs a CPU fallback (the gpu tests skip, a --quick benchmark) so that the
# script itself can be checked anywhere:   OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg

{
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch, torch_geometric as g; print('torch', torch.__version__, 'pyg', g.__version__, 'cuda', torch.cuda.is_available())"
    "$PY" -c "import pytest, hypothesis; print('pytest', pytest.__version__, 'hypothesis', hypothesis.__version__)" \
        || echo "pytest/hypothesis missing: step 1 is skipped, step 2 still checks equivalence"
} > "$OUT/env.txt" 2>&1

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
HAS_PYTEST=$("$PY" -c "import pytest, hypothesis; print(1)" 2>/dev/null || echo 0)
echo "cuda=$HAS_CUDA pytest=$HAS_PYTEST" >> "$OUT/env.txt"

# 1. tests ---------------------------------------------------------------------------------
if [ "$HAS_PYTEST" = 1 ]; then
    if [ "$HAS_CUDA" = 1 ]; then
        timeout 60 "$PY" -m pytest -q -p no:cacheprovider -rs -m gpu tests > "$OUT/tests.log" 2>&1
        echo "pytest -m gpu: rc=$?" > "$OUT/summary.txt"
        timeout 110 "$PY" -m pytest -q -p no:cacheprovider -rs tests/backends/test_backends.py tests/backends/test_dispatch.py >> "$OUT/tests.log" 2>&1
        echo "backend matrix + dispatch on CUDA: rc=$?" >> "$OUT/summary.txt"
    else
        timeout 170 "$PY" -m pytest -q -p no:cacheprovider -rs -m gpu tests/backends/test_backends.py tests/backends/test_dispatch.py > "$OUT/tests.log" 2>&1
        echo "CPU fallback, pytest -m gpu (all skip without CUDA): rc=$?" > "$OUT/summary.txt"
    fi
else
    echo "pytest not installed: tests skipped" > "$OUT/summary.txt"
fi

# 2. spot check without pytest ------------------------------------------------------------
timeout 40 "$PY" - > "$OUT/spot_check.log" 2>&1 <<'PYEOF'
import copy, torch, gatattn as ga
dev = "cuda" if torch.cuda.is_available() else "cpu"
graphs = {"complete": ga.complete_graph(lengths=[100, 156]), "causal": ga.causal_graph(256),
          "window": ga.window_graph(256, 16), "bigbird": ga.bigbird_graph(256, block_size=16, seed=0)}
backends = ["dense", "block"] + (["flex"] if dev == "cuda" else [])
dtypes = [torch.float32] + ([torch.bfloat16] if dev == "cuda" else [])
bad = 0
for gname, g in graphs.items():
    g = g.to(dev)
    for b in backends:
        if b == "dense" and gname not in ("complete", "causal"):
            continue
        for dt in dtypes:
            torch.manual_seed(0)
            gold = ga.GraphAttention(64, 4, backend="edge").to(dev, torch.float64)
            fast = copy.deepcopy(gold).to(dt); fast.backend = b
            x = torch.randn(g.num_dst, 64, device=dev, dtype=torch.float64, requires_grad=True)
            xf = x.detach().to(dt).requires_grad_()
            y, yf = gold(x, g), fast(xf, g)
            y.square().sum().backward(); yf.float().square().sum().backward()
            err = (yf.double() - y).abs().max().item()
            gerr = (xf.grad.double() - x.grad).abs().max().item() / x.grad.abs().max().item()
            tol = 1e-4 if dt == torch.float32 else 5e-2
            ok = err < tol and gerr < 10 * tol
            bad += not ok
            print(f"{gname:9s} {b:6s} {str(dt):15s} out err {err:.2e} grad rel err {gerr:.2e} {'ok' if ok else 'FAIL'}")
print("spot check:", "FAILED" if bad else "all ok")
PYEOF
echo "spot check: rc=$? ($(tail -n 1 "$OUT/spot_check.log"))" >> "$OUT/summary.txt"

# 3. benchmark ----------------------------------------------------------------------------
if [ "$HAS_CUDA" = 1 ]; then
    timeout 130 "$PY" benchmarks/bench.py --device cuda --dtype fp32 --cases P1,P2,P3,P4,P5 --repeat 10 \
        --json "$OUT/bench_fp32.json" --markdown "$OUT/bench_fp32.md" > "$OUT/bench_fp32.log" 2>&1
    echo "bench fp32: rc=$?" >> "$OUT/summary.txt"
    timeout 50 "$PY" benchmarks/bench.py --device cuda --dtype bf16 --cases P1,P2 --no-compile --repeat 10 \
        --json "$OUT/bench_bf16.json" --markdown "$OUT/bench_bf16.md" > "$OUT/bench_bf16.log" 2>&1
    echo "bench bf16: rc=$?" >> "$OUT/summary.txt"
else
    timeout 120 "$PY" benchmarks/bench.py --device cpu --quick --cases P1,P2 \
        --json "$OUT/bench_fp32.json" --markdown "$OUT/bench_fp32.md" > "$OUT/bench_fp32.log" 2>&1
    echo "CPU fallback bench (--quick P1,P2): rc=$?" >> "$OUT/summary.txt"
fi
echo "total ${SECONDS}s" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
