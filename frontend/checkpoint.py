"""The served checkpoint's config.json as the frontend reads it (the tokenizer and template beside it are
frontend.templating's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_checkpoint_config(model_dir: Path) -> dict[str, Any] | None:
    """A checkpoint's config.json as a JSON object; None where it cannot be read as one (the engine, which
    reads the same file, is then the one to say what is wrong)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
