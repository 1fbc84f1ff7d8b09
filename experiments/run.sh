#!/usr/bin/env bash
# Reproduce RESULTS.md: the experiments on the real corpora in ../shared (CPU-sized; see experiments/README.md).
#
#   bash experiments/run.sh                       # all of them, in order
#   bash experiments/run.sh dcgan-faces32 vae-faces32
#   OUT=/data/exp GENLIB_SHARED=/data/shared bash experiments/run.sh pixelrnn-pokemon20
#   TRAIN_ARGS="--set steps=20 --set checkpoint_every=10 --set eval_every=10" bash experiments/run.sh  # smoke test
#
# Each experiment writes $OUT/<name>/ (corpus, run folders, renders) and $OUT/<name>/summary.json
# (commands, wall times, machine, eval numbers); experiments/collect.py gathers the pictures.
set -euo pipefail
cd "$(dirname "$0")/.."

GENLIB=${GENLIB:-.venv/bin/genlib}
PYTHON=${PYTHON:-.venv/bin/python}
SHARED=${GENLIB_SHARED:-../shared}
OUT=${OUT:-experiments/out}
CONFIGS=experiments/configs
ALL=(dcgan-faces32 vae-faces32 dcgan-pokemon64 pixelrnn-pokemon20)

[ -d "$SHARED/corpora" ] || { echo "run.sh: $SHARED/corpora not found (set GENLIB_SHARED)"; exit 2; }
mkdir -p "$OUT"

# step NAME CMD...: run one command, log it and its wall time into $OUT/<experiment>/steps.jsonl
step() {
  local label=$1; shift
  echo "== [$EXP] $label: $*"
  local start=$SECONDS
  "$@"
  "$PYTHON" experiments/collect.py step "$OUT/$EXP" "$label" "$((SECONDS - start))" "$*"
}

corpus() {  # corpus NAME INPUT RECIPE [--set ...]: built once, shared by the experiments that use it
  local name=$1 input=$2 recipe=$3; shift 3
  [ -f "$OUT/corpora/$name/corpus.json" ] || \
    step "corpus $name" "$GENLIB" data build "$input" --recipe "$recipe" --out "$OUT/corpora/$name" --quiet "$@"
}

faces32() {  # LFW deep-funneled, centre 130 px crop -> 32 px; 10 % held out as test, 5 % as val
  corpus faces32 "$SHARED/corpora/faces/lfw-deepfunneled" datasets/lfw.toml \
    --set name='"faces32"' --set size=32 --set min_size=32 --set test_fraction=0.1
}

train() {  # train RUN CONFIG CORPUS [--set ...]
  local run=$1 config=$2 corpus=$3; shift 3
  rm -rf "$OUT/$EXP/runs/$run"
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of words on purpose
  step "train $run" "$GENLIB" train --config "$config" --corpus "$OUT/corpora/$corpus" \
    --set storage_path="\"$OUT/$EXP/runs\"" --set name="\"$run\"" "$@" ${TRAIN_ARGS:-}
}

render() {  # render REQUESTS.jsonl [--set ...]
  local requests=$1; shift
  step "render $(basename "$requests" .jsonl)" "$GENLIB" render --requests "$requests" \
    --output "$OUT/$EXP/renders" --set actors=1 --set cpus_per_actor=1.0 --set threads_per_actor=2 "$@"
}

exp_dcgan_faces32() {
  faces32
  train dcgan "$CONFIGS/dcgan-faces32.toml" faces32
  step "eval completion" "$GENLIB" eval "$OUT/$EXP/runs/dcgan" --completion --samples 16 --iterations 300 \
    --device cpu --quiet
  # FD/KID/precision/recall of the final checkpoint on the whole test split, merged into that step's record
  step "eval fd" "$GENLIB" eval "$OUT/$EXP/runs/dcgan" --device cpu --quiet
  "$PYTHON" experiments/collect.py requests "$OUT/$EXP/completion.jsonl" complete "$OUT/corpora/faces32" test 9 \
    '{"iterations": 600, "restarts": 8, "snapshot_every": 60}'
  render "$OUT/$EXP/completion.jsonl" --set complete.checkpoint="\"$OUT/$EXP/runs/dcgan\""
  "$PYTHON" experiments/collect.py explore "$OUT/$EXP/explore.jsonl" "$OUT/$EXP/runs/dcgan" dcgan
  render "$OUT/$EXP/explore.jsonl"
}

exp_vae_faces32() {
  faces32
  train vae "$CONFIGS/vae-faces32.toml" faces32
  train vae2d "$CONFIGS/vae-faces32.toml" faces32 --set model.latent_dim=2 --set eval_every=0 \
    --set steps=1500
  step "eval vae" "$GENLIB" eval "$OUT/$EXP/runs/vae" --samples 256 --iwae-k 64 --device cpu --quiet
  "$PYTHON" experiments/collect.py explore "$OUT/$EXP/explore.jsonl" "$OUT/$EXP/runs/vae" vae \
    "$OUT/$EXP/runs/vae2d" "$OUT/corpora/faces32"
  render "$OUT/$EXP/explore.jsonl"
}

exp_dcgan_pokemon64() {
  corpus pokemon64 "$SHARED/corpora/pokemon" datasets/pokemon.toml --set name='"pokemon64"' --set test_fraction=0.1
  train dcgan "$CONFIGS/dcgan-pokemon64.toml" pokemon64
  "$PYTHON" experiments/collect.py explore "$OUT/$EXP/explore.jsonl" "$OUT/$EXP/runs/dcgan" dcgan
  render "$OUT/$EXP/explore.jsonl"
}

exp_pixelrnn_pokemon20() {
  corpus pokemon20 "$SHARED/corpora/pokemon" datasets/pokemon-pixelrnn.toml --set test_fraction=0.1
  for variant in row_lstm pixelcnn diagonal_bilstm; do
    train "$variant" "$CONFIGS/pixelrnn-pokemon20.toml" pokemon20 --set model.variant="\"$variant\""
  done
  "$PYTHON" experiments/collect.py requests "$OUT/$EXP/pixel_complete.jsonl" pixel_complete \
    "$OUT/corpora/pokemon20" test 6 "{\"mask\": \"top_half\", \"samples\": 8, \"checkpoint\": \"$OUT/$EXP/runs/row_lstm\"}"
  render "$OUT/$EXP/pixel_complete.jsonl"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")
for EXP in "${names[@]}"; do
  fn="exp_${EXP//-/_}"
  declare -F "$fn" >/dev/null || { echo "run.sh: unknown experiment $EXP (known: ${ALL[*]})"; exit 2; }
  mkdir -p "$OUT/$EXP"
  : > "$OUT/$EXP/steps.jsonl"
  "$fn"
  "$PYTHON" experiments/collect.py summary "$OUT/$EXP"
done
