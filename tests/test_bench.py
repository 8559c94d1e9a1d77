"""Smoke tests of `cumo/bench.py` at a tiny shape: the figures are there and positive (timing targets are
the benchmark's to report, not the tests' to assert)."""

import json

from cumo.bench import bench_moe, main

TINY = dict(images=2, tokens=5, dim=8, hidden=16, num_experts=4, top_k=2, repeats=1, warmup=0)


def test_bench_moe_figures():
    figures = bench_moe(**TINY)
    assert set(figures["median_ms"]) == {"loop", "sorted", "ideal"}
    assert all(ms > 0 for ms in figures["median_ms"].values())
    assert figures["loop/sorted"] > 0 and figures["sorted/ideal"] > 0
    assert {"device", "torch_threads", "torch"} <= set(figures["machine"])


def test_bench_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "moe.json"
    main(["moe", "--images", "1", "--tokens", "3", "--repeats", "1", "--json", str(path)])
    assert "loop/sorted" in capsys.readouterr().out
    assert json.loads(path.read_text())["shape"]["tokens"] == 3


def test_bench_mixture_figures_at_a_small_size(tmp_path, monkeypatch, capsys):
    import tempfile

    # The synthetic mixture and its fake data tree go under tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = tmp_path / "mixture.json"
    main(["mixture", "--entries", "300", "--json", str(path)])
    figures = json.loads(path.read_text())
    build, reader = figures["build"], figures["reader"]
    assert build["entries"]["seen"] == 300 and build["entries"]["kept"] <= 300
    assert build["seconds"] > 0 and build["peak_mb"] >= build["after_import_mb"] > 0
    assert reader["rows"] == build["entries"]["kept"] and reader["read"] == reader["rows"]
    assert reader["after_reads_mb"]["RssAnon"] > 0
    assert figures["synthesis"]["image_files"] > 0
    assert "reader private RSS" in capsys.readouterr().out
    assert not list(tmp_path.glob("cumo-bench-mixture-*"))  # the work files are removed
