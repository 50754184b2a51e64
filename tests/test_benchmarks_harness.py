"""The benchmark harness's own logic, in-process, without timing anything: issue 5's rows and verdicts, where
they are recorded, the exit status, and what bench_host's timer puts inside the clock."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

bm = pytest.importorskip("benchmarks.__main__")
bench_host = pytest.importorskip("benchmarks.bench_host")


def _host(post_b1: float, post_b16: float, pre: float) -> dict:
    return {"centernet 512": {"preprocess": {"zoo_ms": 2.0, "naive_ms": 2.0 * pre, "speedup": pre},
                              "postprocess": {"zoo_b1_ms": 1.0, "zoo_b16_ms": 1.0, "naive_ms": 10.0,
                                              "speedup_b1": post_b1, "speedup_b16": post_b16}}}


def _coco(auto: str = "faster-coco-eval", fastest: str = "faster-coco-eval", diff: float = 0.0) -> dict:
    return {"auto": auto, "fastest": fastest, "ratio": 2.5, "max_abs_diff": diff, "n_metrics": 92,
            "n_bit_identical": 92 if diff == 0 else 90}


def _cn(ratio: float) -> dict:
    return {"ort_ms": 200.0, "torch_ms": 200.0 * ratio, "ratio": ratio, "op_share": {"DeformConv": 0.43}}


def _issue5_rows(host: dict, coco: dict, cn: dict) -> bm.Report:
    rep = bm.Report()
    rep.part = "issue5"
    bm.issue5_targets(rep, host, coco, cn)
    return rep


def test_issue5_targets_pass_with_goals_and_ratios():
    rep = _issue5_rows(_host(8.0, 12.0, 1.3), _coco(), _cn(4.7))
    rows = {r["target"]: r for r in rep.rows}
    assert set(rows) == {"postprocess centernet 512 vs per-image baseline", "preprocess centernet 512 vs naive",
                         "COCO evaluator: the default is the faster, same stats",
                         "CenterNet 512 ORT export vs torch eager"}
    post = rows["postprocess centernet 512 vs per-image baseline"]
    assert post["goal"] == ">= 5x (b1 and b16)" and "b1 8.0x, b16 12.0x" in post["measured"]
    assert rows["CenterNet 512 ORT export vs torch eager"]["goal"] == ">= 1x (no slower)"
    assert "4.70x" in rows["CenterNet 512 ORT export vs torch eager"]["measured"]
    assert all(r["verdict"] == "PASS" and r["part"] == "issue5" for r in rep.rows)
    assert rep.failed == []


@pytest.mark.parametrize("host, coco, cn, failed", [
    (_host(4.9, 12.0, 1.3), _coco(), _cn(4.7), "postprocess centernet 512 vs per-image baseline"),
    (_host(8.0, 4.0, 1.3), _coco(), _cn(4.7), "postprocess centernet 512 vs per-image baseline"),
    (_host(8.0, 12.0, 0.95), _coco(), _cn(4.7), "preprocess centernet 512 vs naive"),
    (_host(8.0, 12.0, 1.3), _coco(auto="pycocotools"), _cn(4.7),
     "COCO evaluator: the default is the faster, same stats"),
    (_host(8.0, 12.0, 1.3), _coco(diff=1e-6), _cn(4.7), "COCO evaluator: the default is the faster, same stats"),
    (_host(8.0, 12.0, 1.3), _coco(), _cn(0.9), "CenterNet 512 ORT export vs torch eager"),
])
def test_issue5_targets_fail_on_each_miss(host, coco, cn, failed):
    assert _issue5_rows(host, coco, cn).failed == [failed]


def test_issue5_miss_makes_the_run_exit_1(monkeypatch, capsys):
    def fake_issue5(self):
        bm.issue5_targets(self.rep, _host(3.0, 3.0, 1.3), _coco(), _cn(4.7))

    monkeypatch.setattr(bm.Bench, "issue5", fake_issue5)
    monkeypatch.setattr(sys, "argv", ["benchmarks", "issue5", "--no-write"])
    assert bm.main() == 1
    err = capsys.readouterr().err
    assert "FAILED targets" in err and "postprocess centernet 512 vs per-image baseline" in err


def _args(parts) -> argparse.Namespace:
    return argparse.Namespace(parts=list(parts), rounds=3, images=480, long_images=2000)


def test_issue5_rows_get_their_own_section_and_results_key(tmp_path, monkeypatch):
    rep = _issue5_rows(_host(8.0, 12.0, 1.3), _coco(), _cn(4.7))
    rep.part = "wider"
    rep.target("WIDER eval", "70x", ">= 20x", True, "wider:speedup")
    rep.figures["wider:speedup"] = {"median": 70.0}
    info = {"cpu": "x", "cores": 2, "load_avg_start": [1.0], "load_avg_end": [1.0]}

    main_md = bm.markdown(info, rep, 10.0, _args(["wider", "issue5"]))
    is5_md = bm.markdown_issue5(info, rep, 10.0, _args(["wider", "issue5"]))
    assert "WIDER eval" in main_md and "CenterNet 512 ORT" not in main_md and "#### issue5" not in main_md
    assert "CenterNet 512 ORT export vs torch eager" in is5_md and "WIDER eval" not in is5_md
    assert is5_md.startswith(bm.ISSUE5_BEGIN) and is5_md.endswith(bm.ISSUE5_END)

    # each run rewrites only its own markers
    monkeypatch.setattr(bm, "ROOT", tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text(f"# B\n\n{bm.BEGIN}\nold main\n{bm.END}\n\nhand text\n\n"
                                            f"{bm.ISSUE5_BEGIN}\nold issue5\n{bm.ISSUE5_END}\n\ntail\n")
    bm.write_markdown(is5_md, bm.ISSUE5_BEGIN, bm.ISSUE5_END)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "old main" in text and "old issue5" not in text and "CenterNet 512 ORT" in text
    assert "hand text" in text and text.endswith("tail\n")

    # results.json: an issue5-only run keeps the default run's figures, and the other way round
    old = {"parts": list(bm.DEFAULT_PARTS), "targets": [{"target": "zoo list"}], "figures": {"a": 1},
           "issue5": {"targets": ["stale"]}}
    only5 = bm.Report()
    only5.rows, only5.figures = [r for r in rep.rows if r["part"] == "issue5"], rep.figures
    out = bm.results_json(old, info, only5, 5.0, _args(["issue5"]))
    assert out["targets"] == [{"target": "zoo list"}] and out["figures"] == {"a": 1}
    assert [r["target"] for r in out["issue5"]["targets"]] == [r["target"] for r in only5.rows]
    assert "issue5:coco" in out["issue5"]["figures"] and out["issue5"]["failed"] == []
    json.dumps(out)
    main_only = bm.Report()
    main_only.part = "wider"
    main_only.target("WIDER eval", "70x", ">= 20x", False)
    out2 = bm.results_json(out, info, main_only, 5.0, _args(["wider"]))
    assert out2["issue5"] == out["issue5"] and out2["failed"] == ["WIDER eval"] and out2["parts"] == ["wider"]


def test_batched_timer_hands_the_decoder_stacked_batches():
    """bench_host's postprocess timer calls the decoder with one (B, ...) array per output and the metas, the
    batches built before the clock starts (the old timer stacked the per-image outputs inside it)."""
    rng = np.random.default_rng(0)
    items = [([rng.random((1, 4, 4), np.float32), rng.random((2, 4, 4), np.float32)], {"i": i}) for i in range(5)]
    items.append(([np.zeros((1, 8, 4), np.float32), np.zeros((2, 8, 4), np.float32)], {"i": 5}))
    calls = []

    def decoder(outs, metas):
        assert all(isinstance(o, np.ndarray) for o in outs)
        calls.append(([o.shape for o in outs], [m["i"] for m in metas]))
        return [None] * len(metas)

    ms = bench_host._batched_cpu_ms(decoder, items, 2, 1)
    assert ms >= 0
    assert calls == [([(2, 1, 4, 4), (2, 2, 4, 4)], [0, 1]), ([(2, 1, 4, 4), (2, 2, 4, 4)], [2, 3]),
                     ([(1, 1, 4, 4), (1, 2, 4, 4)], [4]), ([(1, 1, 8, 4), (1, 2, 8, 4)], [5])]
    outs, metas = bench_host._as_batch(items[:2])
    np.testing.assert_array_equal(outs[0][1], items[1][0][0])
