"""Fixtures of the audio endpoint tests: speech synthesized by espeak-ng (English and German)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

ENGLISH = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."
GERMAN = "Guten Morgen, wie geht es Ihnen heute? Das Wetter ist schön."


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """WAV files by language code."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `make setup`")
    folder = tmp_path_factory.mktemp("audio-speech")
    files = {}
    for voice, text in (("en", ENGLISH), ("de", GERMAN)):
        path = folder / f"{voice}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        files[voice] = path.read_bytes()
    return files
