"""`giraffe explain ...` through its own parser, on a tiny model folder: every view runs,
prints what it claims (JSON checked), writes its files, and bad input is one sentence."""

from __future__ import annotations

import argparse
import json

import pytest

from giraffe.explain.command import add_explain_parser, run_explain


def explain(argv, capsys):
    parser = argparse.ArgumentParser(prog="giraffe")
    add_explain_parser(parser.add_subparsers(dest="command", required=True))
    code = run_explain(parser.parse_args(["explain", *argv]))
    assert code == 0
    return capsys.readouterr().out


def test_attention_writes_page_and_png(tiny_folder, tmp_path, capsys):
    page, png = tmp_path / "a.html", tmp_path / "a.png"
    out = explain(
        [
            "attention",
            str(tiny_folder),
            "No, I am not a giraffe.",
            "--out",
            str(page),
            "--png",
            str(png),
            "--layer",
            "1",
            "--head",
            "3",
        ],
        capsys,
    )
    assert "2 layers x 4 heads" in out and page.exists() and png.exists()
    with pytest.raises(ValueError, match="head 4 does not exist"):
        explain(
            [
                "attention",
                str(tiny_folder),
                "hi",
                "--out",
                str(tmp_path / "b.html"),
                "--png",
                str(png),
                "--head",
                "4",
            ],
            capsys,
        )
    assert not (tmp_path / "b.html").exists()  # checked before anything was written


def test_next_json_and_table(tiny_folder, tmp_path, capsys):
    data = json.loads(
        explain(
            [
                "next",
                str(tiny_folder),
                "The giraffe is",
                "--json",
                "--top-k",
                "3",
                "--try",
                "temperature=0.5",
                "--try",
                "top_k=2",
                "--png",
                str(tmp_path / "n.png"),
            ],
            capsys,
        ).splitlines()[0]
    )
    assert len(data["positions"][0]["top"]) == 3
    assert [r["settings"] for r in data["reshaped"]] == ["temperature=0.5", "top_k=2"]
    assert data["reshaped"][1]["kept"] == 2 and (tmp_path / "n.png").exists()
    assert "mean surprisal" in explain(["next", str(tiny_folder), "The giraffe is"], capsys)
    with pytest.raises(ValueError, match="outside the text"):
        explain(["next", str(tiny_folder), "The giraffe", "--step", "99"], capsys)


def test_lens_embeddings_decode(tiny_folder, tmp_path, capsys):
    lens = json.loads(explain(["lens", str(tiny_folder), "The giraffe is", "--json"], capsys))
    assert lens["layers"] == ["embeddings", "layer 0", "layer 1"]
    assert len(lens["top_tokens"][0]) == len(lens["tokens"])
    assert "logit lens" in explain(
        [
            "lens",
            str(tiny_folder),
            "The giraffe is tall",
            "--columns",
            "2",
            "--png",
            str(tmp_path / "l.png"),
        ],
        capsys,
    )
    emb = json.loads(
        explain(
            [
                "embeddings",
                str(tiny_folder),
                "giraffe",
                "tallest",
                "zebra",
                "--neighbours",
                "3",
                "--png",
                str(tmp_path / "e.png"),
                "--json",
            ],
            capsys,
        )
    )
    assert len(emb["cosine"]) == 3 and all(len(n) == 3 for n in emb["neighbours"])
    assert emb["words"][2]["note"].startswith("mean of") and (tmp_path / "e.png").exists()
    rows = json.loads(
        explain(
            [
                "decode",
                str(tiny_folder),
                "The giraffe",
                "--max-new-tokens",
                "5",
                "--try",
                "temperature=0",
                "--try",
                "num_beams=2",
                "--json",
            ],
            capsys,
        )
    )
    assert [r["strategy"] for r in rows] == ["greedy", "beam search (2 beams)"]
    assert "continued 7 ways" in explain(
        ["decode", str(tiny_folder), "The giraffe", "--max-new-tokens", "3"], capsys
    )


def test_sizes(tiny_folder, capsys):
    out = explain(["sizes", "--preset", "llama2-7b", "--ram", "16"], capsys)
    assert "6,738,415,616 parameters" in out and "what fits in 16 GiB" in out
    report = json.loads(explain(["sizes", str(tiny_folder), "--json"], capsys))
    assert report["config"]["n_layers"] == 2 and "what_fits" not in report
    assert (
        json.loads(explain(["sizes", "smollm2-135m", "--json"], capsys))["total_parameters"]
        == 134_515_008
    )
    with pytest.raises(ValueError, match="either a model or --preset"):
        explain(["sizes", "smollm2-135m", "--preset", "llama2-7b"], capsys)
    with pytest.raises(ValueError, match="--preset NAME"):
        explain(["sizes"], capsys)


@pytest.mark.slow
def test_encoder_views(tmp_path, capsys):
    out = explain(
        ["attention", "minilm-l6", "No, I am not a giraffe.", "--out", str(tmp_path / "m.html")],
        capsys,
    )
    assert "6 layers x 12 heads" in out
    data = json.loads(
        explain(
            ["embeddings", "minilm-l6", "--sentences", "a giraffe", "a horse", "--json"], capsys
        )
    )
    assert data["neighbours"] is None and len(data["cosine"]) == 2
    with pytest.raises(ValueError, match="needs a decoder"):
        explain(["lens", "minilm-l6", "hello"], capsys)
