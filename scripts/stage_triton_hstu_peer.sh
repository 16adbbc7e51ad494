#!/usr/bin/env bash
# Stages the public Triton HSTU attention kernel of meta-recsys/generative-recommenders (the peer
# that issue 3's benchmark measures against) into .peers/, which git ignores: it is carried to the
# GPU machine for a run and never committed.
#
#   scripts/stage_triton_hstu_peer.sh GIT_DIR    # e.g. the library's fetch of the repository
#
# Only the attention kernel and the small modules it imports are taken; the commit is recorded in
# .peers/generative_recommenders.commit so results can name it.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: $0 GIT_DIR_OF_generative-recommenders}
dst=.peers
files=(
  generative_recommenders/__init__.py
  generative_recommenders/common.py
  generative_recommenders/ops/utils.py
  generative_recommenders/ops/triton/triton_attention_utils.py
  generative_recommenders/ops/triton/triton_hstu_attention.py
)
rm -rf "$dst/generative_recommenders"
for f in "${files[@]}"; do
  mkdir -p "$dst/$(dirname "$f")"
  git --git-dir="$src" show "HEAD:$f" > "$dst/$f"
done
git --git-dir="$src" rev-parse HEAD > "$dst/generative_recommenders.commit"
echo "staged $(cat "$dst/generative_recommenders.commit") into $dst"
