"""Render a deployment profile into a complete Triton model repository.

    python -m ensemble_configs.render ensemble_configs/profiles/cpu-default.yaml --output model_repository

Each `templates/<model>/config.pbtxt` is filled from the profile (`${var}` placeholders; a missing
variable is an error, never a silent blank). The models' Python code is copied from the checked-in
`model_repository/`, which is itself the rendering of the cpu-default profile.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Mapping
from pathlib import Path
from string import Template

import yaml

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
PROJECT = HERE.parent
CODE_SOURCE = PROJECT / "model_repository"


def load_profile(path: Path) -> dict[str, str]:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a profile is a mapping of variables")
    values = {key: _format(value) for key, value in raw.items()}
    values["profile_name"] = path.stem
    return values


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _escaped(value: str) -> str:
    """A value as it may sit inside a protobuf text string (a JSON value such as speculative_config's)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render_configs(profile: dict[str, str]) -> dict[str, str]:
    """Model name -> rendered config.pbtxt text."""
    return {
        template.parent.name: Template(template.read_text()).substitute(
            {name: _escaped(value) for name, value in profile.items()}
        )
        for template in sorted(TEMPLATES.glob("*/config.pbtxt"))
    }


def render_repository(profile_path: Path, output: Path) -> None:
    configs = render_configs(load_profile(profile_path))
    for model, text in configs.items():
        model_dir = output / model
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(text)
        code = CODE_SOURCE / model / "1" / "model.py"
        target = model_dir / "1" / "model.py"
        if code.exists() and code.resolve() != target.resolve():
            shutil.copy2(code, target)


def render_variant(profile_path: Path, overrides: Mapping[str, object], folder: Path, name: str) -> Path:
    """The profile with `overrides`, written as folder/<name>.yaml and rendered into (and returned as)
    folder/model_repository-<name>. Its relative checkpoint paths are made absolute against the project:
    a rendering outside it would resolve them against its own parent folder."""
    profile = yaml.safe_load(profile_path.read_text())
    for key in ("model", "whisper_model"):
        if not Path(profile[key]).is_absolute():
            profile[key] = str(PROJECT / profile[key])
    profile.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    variant = folder / f"{name}.yaml"
    variant.write_text(yaml.safe_dump(profile))
    repository = folder / f"model_repository-{name}"
    render_repository(variant, repository)
    return repository


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    render_repository(args.profile, args.output)
    print(f"rendered {args.profile} into {args.output}")


if __name__ == "__main__":
    main()
