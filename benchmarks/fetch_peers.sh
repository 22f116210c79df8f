#!/usr/bin/env bash
# The peers that gpu_suite.py times beside byolctl - lightly and byol-pytorch (lucidrains) -
# installed from their wheels into .peers/site (git-ignored, about 10 MB unpacked), which a
# call to a lent GPU machine carries: that machine reaches no package registry.
#
#   bash benchmarks/fetch_peers.sh        # here, once, with the project's venv active
#
# --no-deps, and only what importing the parts the suite uses needs. lightly's BYOL modules
# need nothing beyond torch, torchvision and numpy. `import byol_pytorch` imports its trainer
# too, and with it beartype, accelerate (which imports safetensors) and einops. The GPU image
# lacks only lightly, byol-pytorch and beartype (all pure Python); it has einops, accelerate
# and safetensors, which are fetched as well so that the suite also runs here (gpu_suite.py
# puts .peers/site last on sys.path, so the GPU image's own versions win there).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
python=${PYTHON:-python3}
missing_on_gpu=(lightly==1.6.0 byol-pytorch==0.9.1 beartype==0.23.1)
for_this_machine=(einops==0.8.2 accelerate==1.16.0 safetensors==0.8.0)
# 10 MB that must never be committed.
grep -qx '/.peers/' .gitignore || { echo "add /.peers/ to .gitignore first" >&2; exit 1; }
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
# safetensors is the one compiled wheel: its abi3 build serves Python 3.11 here and 3.12 there.
"$python" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" \
  "${missing_on_gpu[@]}" "${for_this_machine[@]}" 2> >(grep -v "^WARNING: Location" >&2)
rm -rf .peers/site
"$python" -m pip install -q --no-deps --no-compile --target .peers/site "$wheels"/*.whl
PYTHONPATH=.peers/site "$python" -c "import lightly, byol_pytorch"
ls -l "$wheels"
echo "installed into .peers/site ($(du -sh .peers/site | cut -f1)); lightly and byol_pytorch import"
