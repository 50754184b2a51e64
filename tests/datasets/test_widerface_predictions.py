"""WIDER FACE prediction trees: writer format, strict reader, missing / unsorted policies."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from zoo_core.api.errors import ZooError
from zoo_core.datasets.widerface import (
    ExtraPredictionsWarning,
    UnsortedPredictionsWarning,
    WiderGroundTruth,
    evaluate_wider,
    format_prediction_file,
    read_prediction_file,
    read_prediction_texts,
    read_prediction_tree,
    write_prediction_tree,
)


def _gt() -> WiderGroundTruth:
    boxes = [[np.array([[10, 10, 40, 50], [100, 20, 30, 30]], np.int32), np.array([[5, 5, 20, 20]], np.int32)],
             [np.array([[0, 0, 60, 80]], np.int32)]]
    keep = {
        "easy": [[np.array([0]), np.array([], np.int64)], [np.array([0])]],
        "medium": [[np.array([0, 1]), np.array([], np.int64)], [np.array([0])]],
        "hard": [[np.array([0, 1]), np.array([0])], [np.array([0])]],
    }
    return WiderGroundTruth(events=["0--Synth", "1--Crowd"], files=[["0_Synth_a_1", "1_Synth_b_2"], ["0_Crowd_c_3"]],
                            boxes=boxes, keep=keep)


def _detections():
    return {
        ("0--Synth", "0_Synth_a_1"): (np.array([[100.0, 20.0, 129.0, 49.0], [10.04, 10.0, 49.0, 59.0],
                                                [200.0, 200.0, 220.0, 230.0]]), np.array([0.5, 0.9, 0.1])),
        ("0--Synth", "1_Synth_b_2"): (np.zeros((0, 4)), np.zeros(0)),
        ("1--Crowd", "0_Crowd_c_3"): (np.array([[0.0, 0.0, 59.0, 79.0], [3.0, 3.0, 50.0, 70.0]]),
                                      np.array([0.7, 0.7])),
    }


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_scratch_tree_same_bytes_without_fsync(tmp_path, monkeypatch):
    """``durable=False`` (the evaluator's throw-away tree) writes the same files and never fsyncs."""
    write_prediction_tree(tmp_path / "kept", _detections())
    calls = []
    monkeypatch.setattr("os.fsync", lambda fd: calls.append(fd))
    assert write_prediction_tree(tmp_path / "scratch", _detections(), durable=False) == 3
    assert calls == []
    kept = sorted(p.relative_to(tmp_path / "kept") for p in (tmp_path / "kept").rglob("*.txt"))
    assert kept == sorted(p.relative_to(tmp_path / "scratch") for p in (tmp_path / "scratch").rglob("*.txt"))
    assert len(kept) == 3
    for rel in kept:
        assert (tmp_path / "scratch" / rel).read_bytes() == (tmp_path / "kept" / rel).read_bytes()
    write_prediction_tree(tmp_path / "kept2", _detections())
    assert calls, "the default (durable) writer fsyncs each file"


def test_writer_format(tmp_path):
    assert write_prediction_tree(tmp_path, _detections()) == 3
    text = (tmp_path / "0--Synth" / "0_Synth_a_1.txt").read_text()
    assert text == ("0--Synth/0_Synth_a_1.jpg\n3\n"
                    "10.0 10.0 40.0 50.0 0.900\n"
                    "100.0 20.0 30.0 30.0 0.500\n"
                    "200.0 200.0 21.0 31.0 0.100\n")
    assert (tmp_path / "0--Synth" / "1_Synth_b_2.txt").read_text() == "0--Synth/1_Synth_b_2.jpg\n0\n"
    # ties keep their input order
    assert (tmp_path / "1--Crowd" / "0_Crowd_c_3.txt").read_text().splitlines()[2:] == [
        "0.0 0.0 60.0 80.0 0.700", "3.0 3.0 48.0 68.0 0.700"]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_writer_keeps_input_order_within_ties_past_numpys_small_sort():
    """40 boxes, scores alternating 0.5 / 0.9: numpy's default argsort is unstable past 16 items, so only a stable
    sort keeps each tie in input order (the written rows are what MATLAB read_pred.m and the evaluators see).
    Oracle: Python's stable sorted() by descending score."""
    n = 40
    boxes = np.stack([np.arange(n), np.zeros(n), np.arange(n) + 10, np.full(n, 10)], 1).astype(float)
    scores = np.array([0.5, 0.9] * (n // 2))
    rows = format_prediction_file("0--Synth", "s", boxes, scores).splitlines()[2:]
    assert [int(float(r.split()[0])) for r in rows] == sorted(range(n), key=lambda i: -scores[i])


def test_writer_rejects_bad_arrays(tmp_path):
    with pytest.raises(ZooError, match=r"0--Synth/x.*must be"):
        format_prediction_file("0--Synth", "x", np.zeros((2, 5)), np.zeros(2))
    with pytest.raises(ZooError, match="non-finite"):
        format_prediction_file("0--Synth", "x", np.array([[0, 0, np.nan, 1]]), np.ones(1))
    with pytest.raises(ZooError, match="invalid"):
        write_prediction_tree(tmp_path, {("a/b", "x"): (np.zeros((0, 4)), np.zeros(0))})


def test_round_trip_and_eval(tmp_path):
    gt = _gt()
    write_prediction_tree(tmp_path, _detections())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preds = read_prediction_tree(tmp_path, gt)
    boxes, scores = preds[("0--Synth", "0_Synth_a_1")]
    np.testing.assert_array_equal(scores, [0.9, 0.5, 0.1])
    np.testing.assert_array_equal(boxes[0], [10.0, 10.0, 40.0, 50.0])
    assert preds[("0--Synth", "1_Synth_b_2")][0].shape == (0, 4)
    res = evaluate_wider(preds, gt)
    # worked by hand: normalised scores 1, .5, 0 | .75, .75 (the second .75 box is a repeat hit = FP)
    assert res.num_faces == {"easy": 2, "medium": 3, "hard": 4}
    assert res.ap["easy"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert res.ap["hard"] == pytest.approx(0.25 * 1 + 0.25 * 0.75 + 0.25 * 0.75)


@pytest.mark.parametrize("sort", [True, False])
def test_texts_read_as_the_written_tree(tmp_path, sort):
    """Scoring parses the formatted texts in memory: the same arrays as writing the tree and reading it back
    (with an image missing, and unsorted input kept in order for ``unsorted="keep"``)."""
    gt = _gt()
    rng = np.random.default_rng(7)
    dets = {key: (np.sort(rng.uniform(0, 300, (n, 4)), axis=1), rng.uniform(0, 1, n))
            for key, n in ((("0--Synth", "0_Synth_a_1"), 9), (("1--Crowd", "0_Crowd_c_3"), 4))}
    write_prediction_tree(tmp_path, dets, sort)
    policy = "error" if sort else "keep"
    from_disk = read_prediction_tree(tmp_path, gt, missing="empty", unsorted=policy)
    texts = {key: format_prediction_file(*key, b, s, sort) for key, (b, s) in dets.items()}
    in_memory = read_prediction_texts(texts, gt, unsorted=policy)
    assert list(in_memory) == list(from_disk)
    for key in from_disk:
        for a, b in zip(in_memory[key], from_disk[key], strict=True):
            np.testing.assert_array_equal(a, b)
    assert in_memory[("0--Synth", "1_Synth_b_2")][0].shape == (0, 4)
    if not sort:
        assert not np.all(np.diff(in_memory[("0--Synth", "0_Synth_a_1")][1]) <= 0)
        with pytest.raises(ZooError, match=r"0--Synth/0_Synth_a_1\.txt.*descending"):
            read_prediction_texts(texts, gt, unsorted="error")
    bad = dict(texts)
    bad[("1--Crowd", "0_Crowd_c_3")] = texts[("1--Crowd", "0_Crowd_c_3")].replace("\n4\n", "\n5\n")
    with pytest.raises(ZooError, match="count line says 5"):
        read_prediction_texts(bad, gt)


def test_missing_file_policy(tmp_path):
    gt = _gt()
    dets = _detections()
    del dets[("0--Synth", "1_Synth_b_2")]
    write_prediction_tree(tmp_path, dets)
    with pytest.raises(ZooError, match=r"1_Synth_b_2\.txt.*missing \(1 of 3"):
        read_prediction_tree(tmp_path, gt)
    preds = read_prediction_tree(tmp_path, gt, missing="empty")
    assert preds[("0--Synth", "1_Synth_b_2")][1].shape == (0,)
    # the missing image's face still counts: hard has 4 faces and at most 3 can be found
    res = evaluate_wider(preds, gt)
    assert res.num_faces["hard"] == 4
    assert np.nanmax(res.recall["hard"]) == pytest.approx(3 / 4)
    with pytest.raises(ZooError, match="missing must be"):
        read_prediction_tree(tmp_path, gt, missing="skip")


@pytest.mark.parametrize("kind, said", [("fifo", "not a regular file"), ("directory", "a directory"),
                                        ("broken_link", "a broken symbolic link"), ("event_file", "not a directory")])
def test_a_prediction_path_that_is_not_a_regular_file_is_refused_not_missing(tmp_path, kind, said):
    """Before: read_prediction_tree read a FIFO or a directory named <stem>.txt as missing; with missing="empty"
    those images silently got no predictions. Now, as the CLI's tree reader does, an error naming it."""
    import os
    import threading

    gt = _gt()
    dets = _detections()
    del dets[("0--Synth", "1_Synth_b_2")]
    if kind == "event_file":
        del dets[("1--Crowd", "0_Crowd_c_3")]
    write_prediction_tree(tmp_path, dets)
    path = tmp_path / "0--Synth" / "1_Synth_b_2.txt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "broken_link":
        path.symlink_to("nowhere.txt")
    else:
        path = tmp_path / "1--Crowd"
        path.write_text("")
    out: list = []

    def read() -> None:
        try:
            out.append(read_prediction_tree(tmp_path, gt, missing="empty"))
        except ZooError as exc:
            out.append(str(exc).split("\n")[0])

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive()
    what = "event folder" if kind == "event_file" else "prediction file"
    assert out == [f"{path}: the {what} is {said}"]


def test_unsorted_policy(tmp_path):
    gt = _gt()
    write_prediction_tree(tmp_path, _detections())
    lines = ["0--Synth/0_Synth_a_1.jpg", "3", "200.0 200.0 21.0 31.0 0.100", "10.0 10.0 40.0 50.0 0.900",
             "100.0 20.0 30.0 30.0 0.500"]
    _write(tmp_path / "0--Synth" / "0_Synth_a_1.txt", "\n".join(lines) + "\n")
    _write(tmp_path / "1--Crowd" / "0_Crowd_c_3.txt",
           "0_Crowd_c_3.jpg\n2\n3.0 3.0 48.0 68.0 0.600\n0.0 0.0 60.0 80.0 0.700\n")
    with pytest.warns(UnsortedPredictionsWarning, match="^2 prediction file"):
        preds = read_prediction_tree(tmp_path, gt)
    np.testing.assert_array_equal(preds[("0--Synth", "0_Synth_a_1")][1], [0.9, 0.5, 0.1])
    np.testing.assert_array_equal(preds[("0--Synth", "0_Synth_a_1")][0][:, 0], [10.0, 100.0, 200.0])
    kept = read_prediction_tree(tmp_path, gt, unsorted="keep")
    np.testing.assert_array_equal(kept[("0--Synth", "0_Synth_a_1")][1], [0.1, 0.9, 0.5])
    with pytest.raises(ZooError, match=r"0_Synth_a_1\.txt.*not in descending score order"):
        read_prediction_tree(tmp_path, gt, unsorted="error")
    # file order matters to the WV algorithm: unsorted files lose AP (REFERENCE 3.9 ordering pitfall)
    assert evaluate_wider(kept, gt).ap["hard"] < evaluate_wider(preds, gt).ap["hard"]


def test_count_mismatch(tmp_path):
    p = _write(tmp_path / "f.txt", "f.jpg\n3\n1 2 3 4 0.5\n1 2 3 4 0.4\n")
    with pytest.raises(ZooError, match=r"f\.txt.*count line says 3 boxes but the file has 2"):
        read_prediction_file(p)
    p = _write(tmp_path / "g.txt", "g.jpg\n1\n1 2 3 4 0.5\n1 2 3 4 0.4\n")
    with pytest.raises(ZooError, match="says 1 boxes but the file has 2"):
        read_prediction_file(p)


def test_malformed_lines(tmp_path):
    p = _write(tmp_path / "f.txt", "f.jpg\n2\n1 2 3 4 0.5\n1 2 3 0.4\n")
    with pytest.raises(ZooError, match=r"f\.txt:4.*expected 5 values"):
        read_prediction_file(p)
    p = _write(tmp_path / "g.txt", "g.jpg\n2\n1 2 3 4 0.5\n1 2 x 4 0.4\n")
    with pytest.raises(ZooError, match=r"g\.txt:4.*not a number"):
        read_prediction_file(p)
    p = _write(tmp_path / "h.txt", "h.jpg\n2\n1 2 3 4 nan\n1 2 3 4 0.4\n")
    with pytest.raises(ZooError, match=r"h\.txt:3.*non-finite"):
        read_prediction_file(p)
    p = _write(tmp_path / "i.txt", "i.jpg\ntwo\n")
    with pytest.raises(ZooError, match=r"i\.txt:2.*not an integer"):
        read_prediction_file(p)
    p = _write(tmp_path / "j.txt", "j.jpg\n")
    with pytest.raises(ZooError, match=r"j\.txt.*count line"):
        read_prediction_file(p)
    p = _write(tmp_path / "k.txt", "k.jpg\n1\n1\t2  3 4 0.5\n\n\n")
    name, boxes, scores = read_prediction_file(p)
    assert name == "k.jpg" and boxes.tolist() == [[1, 2, 3, 4]] and scores.tolist() == [0.5]


def test_name_line_mismatch(tmp_path):
    gt = _gt()
    write_prediction_tree(tmp_path, _detections())
    _write(tmp_path / "1--Crowd" / "0_Crowd_c_3.txt", "1--Crowd/0_Crowd_c_4.jpg\n0\n")
    with pytest.raises(ZooError, match=r"0_Crowd_c_3\.txt.*name line '1--Crowd/0_Crowd_c_4.jpg'"):
        read_prediction_tree(tmp_path, gt)
    _write(tmp_path / "1--Crowd" / "0_Crowd_c_3.txt", "0_Crowd_c_3\n0\n")
    read_prediction_tree(tmp_path, gt)


def test_extra_files_warn(tmp_path):
    gt = _gt()
    write_prediction_tree(tmp_path, _detections())
    _write(tmp_path / "1--Crow" / "0_Crowd_c_3.txt", "0_Crowd_c_3.jpg\n0\n")
    with pytest.warns(ExtraPredictionsWarning, match="^1 prediction file"):
        read_prediction_tree(tmp_path, gt)
    with pytest.raises(ZooError, match="prediction folder not found"):
        read_prediction_tree(tmp_path / "none", gt)
