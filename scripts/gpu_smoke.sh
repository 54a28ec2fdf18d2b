#!/usr/bin/env bash
# GPU smoke run: warm-up, one EM iteration and evaluation of the default model on a CUDA GPU in
# bf16, then generation and training tokens/s on the GPU against the CPU on a small slice.
#
#   bash scripts/gpu_smoke.sh            # with the project installed (or its wheels carried)
#
# The stages run in a scratch copy, one after the other in DAG order and without DVC or MLflow
# (a GPU box often has neither), so the run leaves the project's runs/ alone. Without a CUDA GPU
# only the CPU part (the throughput slice) runs. Needs models/SmolLM2-135M-Instruct.Q4_1.gguf
# (scripts/fetch_default_model.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ROOT=$PWD
export EXSEARCH_TRACKING=off HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU here: running the CPU throughput slice only"
  [ -d models/base ] || "$PY" -m stages.init_model --out models/base
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" bench/throughput.py --model models/base
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r exsearch stages data params.yaml "$WORK"/
mkdir -p "$WORK/models" && ln -s "$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$WORK/models/"
cd "$WORK"
"$PY" - <<'PYEOF'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["model"].update(device="cuda", dtype="bfloat16")
p["generation"]["batch_size"] = 64
p["agent"].update(top_k=5, passage_max_words=60)
p["train"].update(bf16=True, batch_size=8)
p["warmup"].update(max_examples=200, epochs=1.0)
p["sample"].update(questions=128, k=4)
p["evaluate"]["limit"] = 200
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PYEOF

step() { local name=$1; shift; local t0=$SECONDS; "$PY" -m "$@"; echo "stage $name: $((SECONDS - t0)) s"; }
step prepare stages.prepare
step index stages.index
step init_model stages.init_model --out models/base
step evaluate@base stages.evaluate --iteration base
step warmup stages.warmup
step evaluate@iter_0 stages.evaluate --iteration iter_0
step sample@iter_1 stages.sample --iteration iter_1 --prev iter_0
step weigh@iter_1 stages.weigh --iteration iter_1 --prev iter_0
step train@iter_1 stages.train --iteration iter_1 --prev iter_0
step evaluate@iter_1 stages.evaluate --iteration iter_1
for c in base iter_0 iter_1; do
  "$PY" -c "import json; m=json.load(open('runs/$c/metrics.json')); o=m['overall']; print('$c', {k: o[k] for k in ('em','f1','acc','recall','searches_per_question','finish_reasons')}, m['seconds'])"
done
"$PY" -c "import json; s=json.load(open('runs/iter_1/sample_stats.json')); print('sampling', s)"
"$PY" -c "import json; s=json.load(open('runs/iter_1/train_stats.json')); s.pop('loss_history'); print('training', s)"
cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" bench/throughput.py --model "$WORK/models/base"
