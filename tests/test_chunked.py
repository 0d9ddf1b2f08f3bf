"""Chunked models: pull installs parts, assembles once (checksummed), uninstalls the parts.

The parts are tiny fake distributions written in the test (a dist-info folder and a data
file on sys.path, found by importlib.metadata exactly as real ones are); a fake pip
installs and uninstalls them, so the whole `registry.pull` path runs without a network.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil

import pytest

from giraffe.formats import chunked, registry
from giraffe.formats.chunked import ChunkedFile, ChunkError, Part

CHUNKS = [b"GGUF" + bytes(range(200)) * 3, b"middle part \x00\xff" * 50, b"the end"]
ALIAS = "fake-chunked"


def _dist_name(k: int) -> str:
    return f"giraffe-fake-part{k}"


def _spec(chunks=CHUNKS) -> ChunkedFile:
    whole = b"".join(chunks)
    parts = tuple(
        Part(
            _dist_name(k),
            "1.0",
            f"giraffe_fake_part{k}/data/part0{k}.bin",
            len(c),
            hashlib.sha256(c).hexdigest(),
        )
        for k, c in enumerate(chunks, 1)
    )
    return ChunkedFile("fake.gguf", len(whole), hashlib.sha256(whole).hexdigest(), parts)


class FakeIndex:
    """pip install/uninstall of fake part distributions in `site`; records every call."""

    def __init__(self, site, payloads: dict[str, bytes]):
        self.site, self.payloads, self.calls = site, payloads, []

    def __call__(self, args, quiet):
        self.calls.append(args[0])
        if args[0] == "install":
            for pin in (a for a in args[1:] if "==" in a):
                self.install(pin)
        else:
            for name in args[2:]:
                self.remove(name)
        importlib.invalidate_caches()

    def install(self, pin: str):
        name, version = pin.split("==")
        module = name.replace("-", "_")
        info = self.site / f"{module}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        if name in self.payloads:
            k = name[-1]
            (self.site / module / "data").mkdir(parents=True, exist_ok=True)
            (self.site / module / "data" / f"part0{k}.bin").write_bytes(self.payloads[name])

    def remove(self, name: str):
        module = name.replace("-", "_")
        for path in self.site.glob(f"{module}*"):
            shutil.rmtree(path)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("GIRAFFE_HOME", str(tmp_path / "home"))
    spec = _spec()
    entry = registry.RegisteredModel(ALIAS, None, "", "", "a fake chunked model", spec)
    monkeypatch.setitem(registry.REGISTRY, ALIAS, entry)
    index = FakeIndex(site, {_dist_name(k): c for k, c in enumerate(CHUNKS, 1)})
    yield spec, index
    importlib.invalidate_caches()


def _leftovers(spec) -> list[str]:
    return (
        sorted(p.name for p in chunked.store_dir().glob("*"))
        if chunked.store_dir().exists()
        else []
    )


def test_pull_assembles_verifies_and_removes_the_parts(fake):
    spec, index = fake
    assert registry.state(ALIAS) == "missing"
    path = registry.pull(ALIAS, pip=index)
    assert path.read_bytes() == b"".join(CHUNKS)
    assert index.calls == ["install", "uninstall"]
    assert all(chunked.part_file(p) is None for p in spec.parts)  # not kept twice
    assert registry.state(ALIAS) == "installed" and registry.resolve(ALIAS) == path
    assert _leftovers(spec) == ["fake.gguf", "fake.gguf.json"]
    # Pulling again only re-hashes the installed file.
    assert registry.pull(ALIAS, pip=index) == path and index.calls == ["install", "uninstall"]


def test_keep_parts_and_parts_present_state(fake):
    spec, index = fake
    index.install(f"{_dist_name(1)}==1.0")
    assert registry.state(ALIAS) == "partial"
    with pytest.raises(
        registry.ModelNotFound,
        match=f"missing part package {_dist_name(2)}==1.0 "
        r"\(and 1 more\): run `giraffe pull fake-chunked`",
    ):
        registry.resolve(ALIAS)
    for k in (2, 3):
        index.install(f"{_dist_name(k)}==1.0")
    assert registry.state(ALIAS) == "parts"
    with pytest.raises(registry.ModelNotFound, match="not assembled: run `giraffe pull fake"):
        registry.resolve(ALIAS)
    registry.pull(ALIAS, keep_parts=True, pip=index)
    assert index.calls == []  # every part was there: no pip at all
    assert all(chunked.part_file(p) is not None for p in spec.parts)


def test_corrupt_part_is_named_and_nothing_half_written(fake):
    spec, index = fake
    index.payloads[_dist_name(2)] = CHUNKS[1][:-1] + b"X"  # same size, one byte differs
    with pytest.raises(
        ChunkError,
        match=r"part 2 of fake.gguf \(giraffe-fake-part2==1.0, .*\) "
        r"is corrupt.*run `giraffe pull --force fake-chunked`",
    ):
        registry.pull(ALIAS, pip=index)
    assert _leftovers(spec) == []  # no final file, no record, no .partial
    assert registry.state(ALIAS) == "parts"
    # The fix the message names: a forced pull reinstalls the parts and rebuilds.
    index.payloads[_dist_name(2)] = CHUNKS[1]
    assert registry.pull(ALIAS, force=True, pip=index).read_bytes() == b"".join(CHUNKS)


def test_corrupt_assembled_file_is_found_and_rebuilt(fake):
    spec, index = fake
    path = registry.pull(ALIAS, pip=index)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size: only the full hash sees it
    with pytest.raises(ChunkError, match=r"fake.gguf is corrupt .* run `giraffe pull --force"):
        registry.pull(ALIAS, pip=index)
    path.write_bytes(bytes(data[:-3]))  # truncated: even loading notices
    assert registry.state(ALIAS) == "damaged"
    with pytest.raises(registry.ModelNotFound, match="run `giraffe pull --force fake-chunked`"):
        registry.resolve(ALIAS)
    assert registry.pull(ALIAS, force=True, pip=index).read_bytes() == b"".join(CHUNKS)
    assert registry.state(ALIAS) == "installed"


def test_interrupted_assembly_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    monkeypatch.setenv("GIRAFFE_HOME", str(tmp_path / "home"))
    spec = _spec()
    files = []
    for k, c in enumerate(CHUNKS, 1):
        files.append(tmp_path / f"c{k}")
        files[-1].write_bytes(c)
    files[2] = tmp_path  # a folder where the last chunk should be: reading it fails midway
    with pytest.raises(OSError):
        chunked.assemble(spec, files, "fix it")
    assert _leftovers(spec) == []
    files[2] = tmp_path / "c3"
    assert chunked.assemble(spec, files, "fix it").read_bytes() == b"".join(CHUNKS)


def test_wrong_whole_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GIRAFFE_HOME", str(tmp_path / "home"))
    good = _spec()
    bad = ChunkedFile(good.filename, good.size, "0" * 64, good.parts)
    files = []
    for k, c in enumerate(CHUNKS, 1):
        files.append(tmp_path / f"c{k}")
        files[-1].write_bytes(c)
    with pytest.raises(ChunkError, match="expected 000000000000"):
        chunked.assemble(bad, files, "fix")
    assert _leftovers(bad) == []


@pytest.mark.parametrize("alias", ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m"])
def test_real_chunked_entries_are_consistent(alias):
    spec = registry.REGISTRY[alias].chunked
    assert sum(p.size for p in spec.parts) == spec.size == registry.REGISTRY[alias].size
    assert len({p.package for p in spec.parts}) == len(spec.parts)
    path = registry.installed_path(alias)
    if path is not None:
        assert path.stat().st_size == spec.size and path.name == spec.filename


def test_failed_forced_pull_keeps_the_installed_file(fake):
    spec, index = fake
    path = registry.pull(ALIAS, pip=index)

    def offline(args, quiet):
        raise registry.ModelNotFound("`pip install ...` failed (exit code 1); check the network")

    with pytest.raises(registry.ModelNotFound, match="check the network"):
        registry.pull(ALIAS, force=True, pip=offline)
    assert registry.state(ALIAS) == "installed" and path.read_bytes() == b"".join(CHUNKS)
