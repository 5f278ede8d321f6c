#!/usr/bin/env bash
# One-shot GPU measurement: bench/gpu_throughput.py on one H100/H200, results under $OUT (or
# bench/out/). Meant for a machine lent for a few minutes: it checks the Python environment
# first (installing missing pure-Python packages from ./wheels if that directory was brought
# along — there may be no network), then runs the benchmark once within BUDGET seconds.
#
#   bash bench/gpu_run.sh            # BUDGET=330: about 6 minutes including the model build
#   BUDGET=240 bash bench/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
BUDGET="${BUDGET:-330}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; } | tee "$OUT/gpu.txt"

missing=$("$PY" - <<'EOF'
import importlib.util
needed = ["torch", "transformers", "qwen_vl_utils", "decord", "av", "sqlalchemy", "alembic",
          "pydantic", "typer", "tokenizers", "psutil", "PIL", "numpy", "torchvision"]
print(" ".join(n for n in needed if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "missing: $missing" | tee -a "$OUT/gpu.txt"
    if [ -d wheels ]; then
        "$PY" -m pip install -q --no-index --find-links wheels -e . 2>&1 | tail -5 | tee -a "$OUT/gpu.txt"
    else
        echo "no ./wheels to install from: bring the missing packages as wheels" | tee -a "$OUT/gpu.txt"
        exit 3
    fi
fi

# --compile: static KV cache + torch.compile, timed last and only while the budget allows;
# --profile: where 8 decode steps at batch 16 spend their time (torch profiler, CUDA activity).
timeout $((BUDGET + 120)) "$PY" bench/gpu_throughput.py --budget "$BUDGET" --compile --profile \
    2> "$OUT/gpu_throughput.stderr" | tee "$OUT/gpu_throughput.md"
tail -20 "$OUT/gpu_throughput.stderr" || true
