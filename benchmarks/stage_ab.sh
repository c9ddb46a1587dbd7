#!/bin/bash
# The train stage of an earlier commit against the working tree's, alternating, on the same
# preprocessed images: images/s, peak RSS and seconds from each run's metrics/train.json.
#   benchmarks/stage_ab.sh <earlier rev> <data/processed folder> [steps=300] [rounds=2]
set -euo pipefail
rev=$1 processed=$(realpath "$2") steps=${3:-300} rounds=${4:-2}
project=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'git -C "$project" worktree remove --force "$scratch/earlier" >/dev/null 2>&1; rm -rf "$scratch"' EXIT
git -C "$project" worktree add -q "$scratch/earlier" "$rev"
for round in $(seq "$rounds"); do
  for side in earlier current; do
    workspace=$scratch/$side-$round
    mkdir -p "$workspace/data" && ln -s "$processed" "$workspace/data/processed"
    sed "s/^steps: .*/steps: $steps/" "$project/params.yaml" > "$workspace/params.yaml"
    code=$([ "$side" = earlier ] && echo "$scratch/earlier" || echo "$project")
    (cd "$workspace" && PYTHONPATH=$code/src "$project/.venv/bin/python" "$code/stages/train.py" > log 2>&1)
    "$project/.venv/bin/python" -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[2], \
d['images_per_second'], 'images/s', d['peak_rss_mb'], 'MB', d['train_seconds'], 's')" \
      "$workspace/metrics/train.json" "$side round $round:"
  done
done
