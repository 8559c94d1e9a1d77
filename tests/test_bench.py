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
