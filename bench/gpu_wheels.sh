#!/usr/bin/env bash
# Downloads, into .whl/ (ignored by git), the wheels the GPU machine lacks for medssl: lightly
# and the packages it names that the machine's image does not hold (.library/device/KINDS.md
# lists the image's packages). The machine runs Python 3.12 on x86-64 and has no network.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.whl/" >> .git/info/exclude; }
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 ttach==0.0.3
# hydra-core pins antlr4-python3-runtime 4.9.*, published as source only: build its (pure
# Python) wheel here.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
# grad-cam (the figures' class-activation maps) is published as source only too; pure Python.
python3 -m pip wheel -q --no-deps -w .whl grad-cam==1.5.7
ls -l .whl
