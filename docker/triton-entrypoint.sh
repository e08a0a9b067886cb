#!/usr/bin/env bash
# Render the repository for the chosen deployment profile, then hand the process over to tritonserver.
set -euo pipefail
python3 -m ensemble_configs.render "${TRITONLLM_PROFILE}" --output /tmp/model_repository
exec tritonserver --model-repository /tmp/model_repository "$@"
