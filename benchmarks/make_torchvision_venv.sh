#!/usr/bin/env bash
# The separate environment of the torchvision engine benchmark (bench_engine): torchvision needs torch 2.14.1, while
# slimkit's own environment runs torch 2.13.0. Makes $SLIMKIT_TV_VENV (default benchmarks/.venv-torchvision) with
# torch 2.14.1 + torchvision 0.29.1 (on this machine pip takes both from disk), slimkit (editable) and Torch-Pruning.
# Usage: benchmarks/make_torchvision_venv.sh        (about 5.6 GB; a few minutes)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SLIMKIT_TV_VENV:-$here/.venv-torchvision}"
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import torchvision, torch_pruning, slimkit" 2>/dev/null; then
  echo "ready: $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
case "$(uname -m)" in
  aarch64) "$venv/bin/pip" install --quiet torch==2.9.1 torchvision==0.24.1 ;;
  *) "$venv/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1 ;;
esac
"$venv/bin/pip" install --quiet -e "$here/.." "torch-pruning>=1.4" psutil
"$venv/bin/python" -c "import torch, torchvision, torch_pruning; print('ready:', '$venv', 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'torch_pruning', torch_pruning.__version__)"
