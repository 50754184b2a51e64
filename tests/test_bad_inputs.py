"""Every bad input of issue 8 through the real CLI: one clear message (file + reason), exit != 0,
no traceback, no metrics.json; ``on_error=skip`` lists skipped files and still exits != 0 unless
``allow_skips=true``. Config errors and wrong-size ``.bin`` files are covered in test_cli_config.py
and test_stages_cli.py; this file covers images, annotations, weights, model files and outputs.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

BAD_STEM = "sq001"


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _jpeg_bytes(img) -> bytes:
    import cv2

    return cv2.imencode(".jpg", img)[1].tobytes()


def _corrupt_jpeg(p: Path, img) -> None:
    data = _jpeg_bytes(img)
    p.write_bytes(data[: len(data) * 3 // 5])


def _garbage_jpeg(p: Path, img) -> None:
    p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)


IMAGE_ERRORS = {
    # name: (make the bad file from (path, good image), reason text in stderr)
    "corrupt_jpeg": (_corrupt_jpeg, "not a decodable image"),
    "garbage_jpeg_header": (_garbage_jpeg, "not a decodable image"),
    "zero_bytes": (lambda p, img: p.write_bytes(b""), "empty (0 bytes)"),
    "missing": (lambda p, img: p.unlink(), "image file not found"),
    "not_an_image": (lambda p, img: p.write_text("name,score\nx,1\n" * 20), "not a decodable image"),
    "20000x20000": (lambda p, img: _png_header_only(p, 20000, 20000), "over the limit"),
}


@pytest.fixture(scope="session")
def squares_base(tmp_path_factory) -> Path:
    from zoo_fixture.squares import make_squares

    return make_squares(tmp_path_factory.mktemp("squares") / "base", n=5, seed=3)


def _variant(base: Path, dest: Path, changes: dict) -> Path:
    import cv2

    shutil.copytree(base, dest)
    for stem, make in changes.items():
        p = dest / "images" / f"{stem}.png"
        make(p, cv2.imread(str(p)))
    return dest


def _assert_clean_failure(rc, err, *texts, run_dir: Path):
    assert rc != 0, err
    assert "Traceback" not in err, err
    for t in texts:
        assert str(t) in err, f"{t!r} not in stderr:\n{err}"
    assert not list(run_dir.rglob("metrics.json"))


@pytest.mark.parametrize("kind", list(IMAGE_ERRORS))
def test_bad_image_stops_with_file_and_reason(zoo, squares_base, kind):
    make, reason = IMAGE_ERRORS[kind]
    root = _variant(squares_base, zoo.cwd / "ds", {BAD_STEM: make})
    rc, out, err = zoo("run", "model=fixture", "backend=oracle", "num_workers=0", f"dataset.root={root}",
                       "work_dir=run")
    _assert_clean_failure(rc, err, root / "images" / f"{BAD_STEM}.png", reason, run_dir=zoo.cwd / "run")


def test_bad_images_are_skipped_listed_and_fail_unless_allowed(zoo, squares_base):
    stems = ["sq000", "sq001", "sq002", "sq003"]
    kinds = ["corrupt_jpeg", "zero_bytes", "missing", "20000x20000"]
    root = _variant(squares_base, zoo.cwd / "ds", {s: IMAGE_ERRORS[k][0] for s, k in zip(stems, kinds)})
    args = ["run", "model=fixture", "backend=oracle", "num_workers=1", f"dataset.root={root}", "on_error=skip"]
    rc, out, err = zoo(*args, "work_dir=a")
    assert rc != 0 and "Traceback" not in err and "allow_skips=true" in err
    m = json.loads((zoo.cwd / "a" / "eval" / "metrics.json").read_text())
    assert sorted(s["id"] for s in m["skipped"]) == stems and m["images"] == 1
    for s, k in zip(stems, kinds):
        rec = next(r for r in m["skipped"] if r["id"] == s)
        assert f"{s}.png" in rec["reason"] and IMAGE_ERRORS[k][1] in rec["reason"]
    zoo.ok(*args, "allow_skips=true", "work_dir=b")
    assert json.loads((zoo.cwd / "b" / "eval" / "metrics.json").read_text())["images"] == 1


WORKING_IMAGES = {
    "grayscale": lambda p, img: _write(p, img[:, :, 1]),
    "rgba": lambda p, img: _write(p, np.dstack([img, np.full(img.shape[:2], 77, np.uint8)])),
    "png16": lambda p, img: _write(p, img.astype(np.uint16) * 257),
}


def _write(p: Path, a) -> None:
    import cv2

    assert cv2.imwrite(str(p), a)


@pytest.mark.parametrize("kind", list(WORKING_IMAGES))
def test_unusual_pixel_formats_read_like_cv2_imread(tmp_path, squares_base, kind):
    """Grayscale -> 3 equal channels, RGBA -> alpha dropped, 16-bit -> >> 8, exactly cv2.imread."""
    import cv2

    from zoo_core.api.imaging import read_image

    src = cv2.imread(str(squares_base / "images" / f"{BAD_STEM}.png"))
    p = tmp_path / "x.png"
    WORKING_IMAGES[kind](p, src)
    img = read_image(p)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    np.testing.assert_array_equal(img, cv2.imread(str(p)))
    if kind == "grayscale":
        assert (img[..., 0] == img[..., 2]).all()
    else:
        np.testing.assert_array_equal(img, src)  # alpha dropped / 16-bit reduced losslessly here


def test_unusual_pixel_formats_and_1x1_work_end_to_end(zoo, squares_base):
    changes = {"sq000": WORKING_IMAGES["grayscale"], "sq001": WORKING_IMAGES["rgba"],
               "sq002": WORKING_IMAGES["png16"], "sq003": lambda p, img: _write(p, img[:1, :1])}
    root = _variant(squares_base, zoo.cwd / "ds", changes)
    boxes = json.loads((root / "boxes.json").read_text())
    boxes["sq003"] = []  # the 1x1 image has no square left
    (root / "boxes.json").write_text(json.dumps(boxes))
    zoo.ok("run", "model=fixture", "backend=oracle", "num_workers=0", f"dataset.root={root}", "work_dir=run")
    m = json.loads((zoo.cwd / "run" / "eval" / "metrics.json").read_text())
    assert m["images"] == 5 and m["skipped"] == [] and m["metrics"]["AP50"] == 1.0


def test_huge_image_is_refused_from_the_header_with_bounded_memory(tmp_path):
    """A real, valid 20000x20000 PNG (1.2 GB decoded) is refused before decoding: peak RSS stays small."""
    import subprocess
    import sys

    path = tmp_path / "huge.png"
    comp = zlib.compressobj(1)
    row = b"\x00" + bytes(20000)
    idat = b"".join(comp.compress(row) for _ in range(20000)) + comp.flush()

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    code = ("import resource, sys\nfrom zoo_core.api.imaging import read_image\n"
            "from zoo_core.api.errors import InputError\n"
            "try:\n    read_image(sys.argv[1])\nexcept InputError as e:\n    print('REFUSED', e)\n"
            "from pathlib import Path\n"
            # VmHWM is this process's own peak; ru_maxrss would also count the forking pytest process's
            # RSS, which Linux carries over fork + exec (a large test session alone exceeds the bound)
            "st = Path('/proc/self/status')\n"
            "hwm = [int(l.split()[1]) for l in st.read_text().splitlines() if l.startswith('VmHWM:')] if st.is_file() else []\n"
            "print('RSS_MB', (hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60).stdout
    assert "REFUSED" in out and "20000x20000" in out and "over the limit" in out, out
    rss = int(out.split("RSS_MB")[1])
    # decoding it as BGR would need 1.2 GB; importing numpy + OpenCV alone takes ~150-300 MB here
    assert rss < 600, f"peak RSS {rss} MB"


def test_a_jpeg_with_a_3_gib_sparse_tail_reads_like_cv2_imread_in_bounded_memory(tmp_path):
    """Before: the whole file was read into memory (a 1.9 GB tail: 2.0 GB RSS; 3 GB: OpenCV's raw
    '(-215:Assertion failed) buf.checkVector' after 3.3 GB), while cv2.imread decodes it in 43 MB. Now the
    header check reads what it needs and cv2.imread decodes the open file: same pixels, under a 2 GiB
    address-space limit, peak RSS far below the file's size (the tail is sparse: nothing on disk)."""
    import subprocess
    import sys

    import cv2

    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "tail.jpg"
    with open(path, "wb") as f:
        f.write(_jpeg_bytes(img))
        f.truncate(3 << 30)
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "import cv2\nfrom zoo_core.api.imaging import read_image\n"
            "img = read_image(sys.argv[1])\nprint('SAME', img.shape, bool((img == cv2.imread(sys.argv[1])).all()))\n"
            "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
            "print('RSS_MB', hwm[0] // 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert "SAME (64, 64, 3) True" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert int(r.stdout.split("RSS_MB")[1]) < 300, r.stdout
    assert cv2.imread(str(path)).shape == (64, 64, 3)


def test_a_fifo_named_like_an_image_is_refused_unopened(tmp_path):
    """Before: called "image file not found", though it is there (a FIFO or a device is no image)."""
    from zoo_core.api.errors import InputError
    from zoo_core.api.imaging import read_image

    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "x.jpg")
    assert str(err.value) == f"{tmp_path / 'x.jpg'}: image file is a FIFO (named pipe), not a regular file"


def test_an_unreadable_image_is_that_images_input_error(tmp_path, monkeypatch, squares_base):
    """Before: an image chmod 000 was `PermissionError in preprocess: ... (unexpected error; traceback ...)`, a bug
    with its traceback; now an InputError naming it, which on_error=skip lists like a corrupt image. (The open is
    faked: root, who runs the tests here, reads any file.)"""
    import zoo_core.api.imaging as imaging
    from zoo_core.api.errors import InputError
    from zoo_core.api.types import Sample
    from zoo_core.pipeline.workers import prepare_one
    from zoo_core.plugins import get_manager

    path = squares_base / "images" / f"{BAD_STEM}.png"

    def forbidden(file, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(imaging, "open", forbidden, raising=False)
    with pytest.raises(InputError) as err:
        imaging.read_image(path)
    assert str(err.value) == f"{path}: cannot read the image file: Permission denied"
    prep = prepare_one(get_manager().hooks_for("fixture"), {}, Sample(BAD_STEM, path))
    assert prep.error == f"{path}: cannot read the image file: Permission denied" and prep.trace is None


def test_an_image_whose_name_is_not_utf8_reads_without_crashing_opencv(tmp_path):
    """cv2.imread segfaults on a str path holding a lone surrogate (a Linux name of non-UTF-8 bytes): read_image
    hands OpenCV /proc/self/fd/<n> instead, never the name."""
    import cv2

    from zoo_core.api.imaging import read_image

    img = (np.random.default_rng(1).random((9, 7, 3)) * 255).astype(np.uint8)
    path = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png"))
    path.write_bytes(cv2.imencode(".png", img)[1].tobytes())
    np.testing.assert_array_equal(read_image(path), img)


def test_bmp_and_jpeg_headers_are_checked_too(tmp_path):
    import cv2

    from zoo_core.api.errors import InputError
    from zoo_core.api.imaging import _header_dims, read_image

    img = np.zeros((7, 9, 3), np.uint8)
    jpg = bytearray(_jpeg_bytes(img))
    bmp = cv2.imencode(".bmp", img)[1].tobytes()
    assert _header_dims(bytes(jpg)) == (7, 9) and _header_dims(bmp) == (7, 9)
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
    (tmp_path / "big.jpg").write_bytes(bytes(jpg))
    with pytest.raises(InputError, match="over the limit"):
        read_image(tmp_path / "big.jpg")


def _image_64x48(kind: str) -> bytes:
    """A 64-wide, 48-high image: a PNG, a top-down BMP (negative height in its header) or a progressive JPEG."""
    import cv2

    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :16] = 255
    if kind == "png":
        return cv2.imencode(".png", img)[1].tobytes()
    if kind == "progressive_jpeg":
        data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
        assert b"\xff\xc2" in data and b"\xff\xc0" not in data
        return data
    bmp = bytearray(cv2.imencode(".bmp", img)[1].tobytes())  # bottom-up: rows stored last first
    assert struct.unpack("<i", bmp[22:26])[0] == 48
    off, stride = struct.unpack("<I", bmp[10:14])[0], 64 * 3
    rows = [bmp[off + r * stride:off + (r + 1) * stride] for r in range(48)]
    bmp[off:off + 48 * stride] = b"".join(reversed(rows))  # top-down: first row first, height -48
    bmp[22:26] = struct.pack("<i", -48)
    return bytes(bmp)


@pytest.mark.parametrize("kind", ["png", "top_down_bmp", "progressive_jpeg"])
def test_the_pixel_limit_is_inclusive_and_names_width_x_height_for_every_parsed_header(tmp_path, monkeypatch, kind):
    """ZOO_MAX_IMAGE_PIXELS is the largest size read: a 64x48 image (3072 pixels) reads at a limit of 3072 and is
    refused from its header at 3071 and 1000, the message naming it width x height ("64x48"). A top-down BMP
    (negative height) and a progressive JPEG (SOF2 frame header) are checked like a PNG."""
    import cv2

    from zoo_core.api.errors import InputError
    from zoo_core.api.imaging import read_image

    path = tmp_path / f"a.{'png' if kind == 'png' else 'bmp' if kind.endswith('bmp') else 'jpg'}"
    path.write_bytes(_image_64x48(kind))
    expected = cv2.imread(str(path))
    assert expected.shape == (48, 64, 3)
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "3072")
    np.testing.assert_array_equal(read_image(path), expected)
    for limit in (3071, 1000):
        monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", str(limit))
        with pytest.raises(InputError) as info:
            read_image(path)
        assert str(info.value) == (f"{path}: image is 64x48 = 3072 pixels, over the limit of {limit}\n"
                                   "  hint: resize it, or raise ZOO_MAX_IMAGE_PIXELS")


def test_a_jpeg_frame_header_after_64_kib_of_app_segments_is_checked(tmp_path):
    """Before: only the first 64 KiB were searched, so OpenCV's raw '(-215:Assertion failed) pixels <=
    CV_IO_MAX_IMAGE_PIXELS' was the message (an ICC profile or EXIF thumbnail moves the SOF that far)."""
    from zoo_core.api.errors import InputError
    from zoo_core.api.imaging import read_image

    jpg = _jpeg_bytes(np.zeros((7, 9, 3), np.uint8))
    app15 = b"\xff\xef" + struct.pack(">H", 60002) + bytes(60000)
    sof = jpg.index(b"\xff\xc0")
    big = bytearray(jpg[:2] + app15 + app15 + jpg[2:])
    at = sof + 2 * len(app15)
    big[at + 5:at + 9] = struct.pack(">HH", 20000, 30000)
    (tmp_path / "big.jpg").write_bytes(bytes(big))
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "big.jpg")
    assert str(info.value) == (f"{tmp_path / 'big.jpg'}: image is 30000x20000 = 600000000 pixels, over the limit of "
                               "100000000\n  hint: resize it, or raise ZOO_MAX_IMAGE_PIXELS")


def test_opencv_pixel_limit_on_an_unparsed_format_is_one_clear_line(tmp_path):
    """TIFF's size is not read from its header: OpenCV's refusal is turned into zoo's message."""
    import os
    import subprocess
    import sys

    import cv2

    cv2.imwrite(str(tmp_path / "a.tiff"), np.zeros((7, 9, 3), np.uint8))
    code = ("import sys\nfrom zoo_core.api.imaging import read_image\nfrom zoo_core.api.errors import InputError\n"
            "try:\n    read_image(sys.argv[1])\nexcept InputError as e:\n    print('REFUSED', e)\n")
    env = {**os.environ, "ZOO_MAX_IMAGE_PIXELS": "10"}
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.tiff")], capture_output=True, text=True,
                         timeout=60, env=env).stdout
    assert out.startswith(f"REFUSED {tmp_path / 'a.tiff'}: image is larger than the limit of 10 pixels "
                          "(OpenCV refused to decode it)"), out
    assert "CV_IO_MAX_IMAGE_PIXELS" not in out


# -- annotations --------------------------------------------------------------------------------------------

COCO_CASES = {
    "not_json": ("{ this is not json", "not a JSON file"),
    "not_coco": (json.dumps({"info": {}, "licenses": []}), "not a COCO instances file"),
    "escapes_root": (json.dumps({"images": [{"id": 1, "file_name": "../../secret.jpg", "width": 8, "height": 8}],
                                 "annotations": [], "categories": [{"id": 1, "name": "person"}]}),
                     "leaves the image folder"),
}


@pytest.mark.parametrize("kind", list(COCO_CASES))
def test_bad_coco_annotation_file(zoo, kind):
    text, reason = COCO_CASES[kind]
    root = zoo.cwd / "coco"
    (root / "val2017").mkdir(parents=True)
    ann = root / "annotations" / "instances_val2017.json"
    ann.parent.mkdir()
    ann.write_text(text)
    rc, out, err = zoo("run", "model=centernet", "backend=oracle", "num_workers=0", f"dataset.root={root}",
                       "work_dir=run")
    _assert_clean_failure(rc, err, ann, reason, run_dir=zoo.cwd / "run")


def test_wider_ground_truth_that_is_not_a_mat_file(zoo):
    root = zoo.cwd / "wider"
    (root / "WIDER_val" / "images").mkdir(parents=True)
    gt = root / "gt"
    gt.mkdir()
    for name in ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat"):
        (gt / name).write_text("<html>not found</html>\n")
    rc, out, err = zoo("run", "model=centerface", "dataset=widerface", f"dataset.root={root}",
                       f"dataset.gt_dir={gt}", "num_workers=0", "work_dir=run")
    _assert_clean_failure(rc, err, gt / "wider_face_val.mat", "not a readable MATLAB .mat file",
                          run_dir=zoo.cwd / "run")


# -- weights and model files --------------------------------------------------------------------------------

def _weights_cases(d: Path) -> dict:
    import torch

    (d / "text.pth").write_text("these are not weights\n")
    torch.save({"state_dict": {"hm.2.weight": torch.zeros(3, 256, 1, 1), "classifier.weight": torch.zeros(2)}},
               d / "other_arch.pth")
    return {
        "text": (d / "text.pth", ["not a PyTorch checkpoint"]),
        "other_arch": (d / "other_arch.pth", ["checkpoint does not match the model", "missing keys",
                                              "unexpected keys (1): classifier.weight",
                                              "mis-shaped keys (1): hm.2.weight [3, 256, 1, 1] "
                                              "(model [80, 256, 1, 1])"]),
    }


@pytest.mark.needs_torch
@pytest.mark.parametrize("kind", ["text", "other_arch"])
def test_centernet_weights_that_are_not_its_checkpoint(zoo, kind):
    path, texts = _weights_cases(zoo.cwd)[kind]
    rc, out, err = zoo("run", "model=centernet", "dataset=coco_sample", "stage=export", f"weights={path}",
                       "work_dir=run")
    _assert_clean_failure(rc, err, path, *texts, run_dir=zoo.cwd / "run")
    assert "weights_only` set to `False`" not in err  # torch's advice to load unsafely is not passed on


def _onnx(path: Path, name: str, shape: list) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, shape)
    g = helper.make_graph([helper.make_node("Sigmoid", [name], ["mask"])], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("kind", ["input_name", "input_shape", "not_onnx"])
def test_onnx_model_file_that_does_not_fit(zoo, kind):
    if kind == "input_name":
        path, texts = _onnx(zoo.cwd / "m.onnx", "data", ["N", 1, 64, 64]), ["model inputs ['data']", "['image']"]
    elif kind == "input_shape":
        path, texts = _onnx(zoo.cwd / "m.onnx", "image", ["N", 3, 32, 32]), ["(1, 1, 64, 64)", "('N', 3, 32, 32)"]
    else:
        path, texts = zoo.cwd / "m.onnx", ["onnxruntime cannot load this model"]
        path.write_bytes(b"\x08\x07garbage")
    rc, out, err = zoo("run", "model=fixture", "num_workers=0", f"model_file={path}", "work_dir=run")
    _assert_clean_failure(rc, err, path, *texts, run_dir=zoo.cwd / "run")


# -- model outputs ------------------------------------------------------------------------------------------

def test_missing_output_files_for_some_images(zoo, infer_run):
    dump = zoo.cwd / "dump"
    shutil.copytree(infer_run / "outputs", dump)
    (dump / "sq003_0.bin").unlink()
    args = ["run", "model=fixture", "stage=postprocess", f"outputs_dir={dump}"]
    rc, out, err = zoo(*args, "work_dir=a")
    _assert_clean_failure(rc, err, dump, "no output files for image 'sq003'", run_dir=zoo.cwd / "a")
    rc, out, err = zoo(*args, "work_dir=b", "on_error=skip")
    assert rc != 0 and "Traceback" not in err
    m = json.loads((zoo.cwd / "b" / "postprocess" / "metrics.json").read_text())
    assert [s["id"] for s in m["skipped"]] == ["sq003"] and m["images"] == 11


def test_nan_and_inf_model_outputs(zoo, infer_run):
    dump = zoo.cwd / "dump"
    shutil.copytree(infer_run / "outputs", dump)
    for stem, value in (("sq002", np.nan), ("sq005", np.inf)):
        a = np.fromfile(dump / f"{stem}_0.bin", "<f4")
        a[100] = value
        a.tofile(dump / f"{stem}_0.bin")
    args = ["run", "model=fixture", "backend=replay", f"outputs_dir={dump}", "num_workers=0"]
    rc, out, err = zoo(*args, "work_dir=a")
    _assert_clean_failure(rc, err, "sq002.png", "NaN or inf", run_dir=zoo.cwd / "a")
    rc, out, err = zoo(*args, "work_dir=b", "on_error=skip")
    assert rc != 0 and "allow_skips" in err and "Traceback" not in err
    m = json.loads((zoo.cwd / "b" / "eval" / "metrics.json").read_text())
    assert sorted(s["id"] for s in m["skipped"]) == ["sq002", "sq005"] and m["images"] == 10
    zoo.ok(*args, "work_dir=c", "on_error=skip", "allow_skips=true")


@pytest.mark.parametrize("kind", ["baseline", "grayscale", "progressive", "restart_markers", "exif6"])
def test_a_jpeg_missing_only_its_end_marker_reads_like_cv2_imread_and_one_cut_short_is_refused(tmp_path, kind):
    """Before: a JPEG whose image data is whole but whose last 2 bytes (the end-of-image marker) are missing was
    refused as "not a decodable image", where the reference's ``cv2.imread`` decodes it to the intact file's
    pixels. A JPEG cut mid-scan is still refused (``cv2.imread`` would fill its missing rows with gray).
    ``exif6``: the marker-less file is decoded in memory, and still turned by its EXIF orientation 6 as
    ``cv2.imread`` turns the intact file (131 wide, 97 high stored; read 97 wide, 131 high)."""
    import cv2

    from zoo_core.api.errors import InputError
    from zoo_core.api.imaging import read_image

    img = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (97, 131, 3), dtype=np.uint8), (7, 7), 3)
    params = {"progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "restart_markers": [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]}
    data = cv2.imencode(".jpg", img[:, :, 0] if kind == "grayscale" else img, params.get(kind, []))[1].tobytes()
    assert data.endswith(b"\xff\xd9")
    if kind == "exif6":  # APP1 Exif, big-endian TIFF header, one IFD entry: Orientation (0x0112), SHORT, 6
        app1 = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00" + bytes(4)
        data = data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    whole, no_marker, cut = tmp_path / "whole.jpg", tmp_path / "no_marker.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(data)
    no_marker.write_bytes(data[:-2])
    cut.write_bytes(data[: len(data) * 9 // 10])
    if kind == "exif6":
        assert cv2.imread(str(whole)).shape == (131, 97, 3)
    np.testing.assert_array_equal(read_image(no_marker), cv2.imread(str(whole)))
    with pytest.raises(InputError, match=r"cut.jpg: not a decodable image: a JPEG cut short, its image data stops "
                                         r"before the last row \(libjpeg: .*premature end of data segment"):
        read_image(cut)


def _sample_jpeg(kind: str) -> bytes:
    """The astronaut of scikit-image's bundled data (the bundled sample's source) as a JPEG, quality 92 as the
    sample is written; ``exif6`` carries an EXIF orientation 6 (rotated when read)."""
    import cv2

    skimage_data = pytest.importorskip("skimage.data")
    img = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)[:, 40:480]
    params = {"progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "restart_markers": [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]}
    data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92, *params.get(kind, [])])[1].tobytes()
    if kind == "exif6":  # APP1 Exif, big-endian TIFF header, one IFD entry: Orientation (0x0112), SHORT, 6
        tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00" + bytes(4)
        app1 = b"Exif\x00\x00" + tiff
        data = data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    return data


@pytest.mark.parametrize("kind", ["baseline", "progressive", "restart_markers", "exif6"])
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9])
def test_a_jpeg_cut_short_is_refused_even_when_it_still_ends_with_an_end_marker(tmp_path, kind, keep):
    """Before: a JPEG cut mid-scan that still ended with FF D9 (cut and the marker put back, or damaged so the
    data stops early) was read, exit 0, its missing rows gray as ``cv2.imread`` fills them (libjpeg's
    "premature end of data segment" went to stderr); only the same file without the marker was refused."""
    import cv2

    from zoo_core.api.errors import InputError
    from zoo_core.api.imaging import read_image

    data = _sample_jpeg(kind)
    whole, cut = tmp_path / "whole.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(data)
    cut.write_bytes(data[: int(len(data) * keep)] + b"\xff\xd9")
    np.testing.assert_array_equal(read_image(whole), cv2.imread(str(whole)))
    assert cv2.imread(str(cut)) is not None  # what the reference would have used: gray rows
    with pytest.raises(InputError, match=r"cut.jpg: not a decodable image: a JPEG cut short, its image data stops "
                                         r"before the last row \(libjpeg: .*premature end of data segment"):
        read_image(cut)


def test_a_jpeg_with_damaged_image_data_is_refused_and_harmless_padding_still_reads(tmp_path, capfd):
    """Before: a JPEG whose entropy-coded data was damaged (libjpeg: "bad Huffman code", rows decoded wrong or
    gray) read with exit 0. Padding between the last scan and the end marker (libjpeg: "extraneous bytes",
    pixels intact) still reads as ``cv2.imread`` reads it, its warning passed on to stderr as cv2 prints it."""
    import cv2

    from zoo_core.api.errors import InputError
    from zoo_core.api.imaging import read_image

    skimage_data = pytest.importorskip("skimage.data")
    data = cv2.imencode(".jpg", cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    damaged = bytearray(data)
    for k in range(20):
        damaged[len(data) // 2 + 37 * k] ^= 0x5A
    (tmp_path / "damaged.jpg").write_bytes(bytes(damaged))
    (tmp_path / "padded.jpg").write_bytes(data[:-2] + bytes(10) + b"\xff\xd9")
    with pytest.raises(InputError, match=r"damaged.jpg: not a decodable image: a corrupt JPEG, its image data is "
                                         r"damaged \(libjpeg: Corrupt JPEG data: bad Huffman code"):
        read_image(tmp_path / "damaged.jpg")
    capfd.readouterr()
    np.testing.assert_array_equal(read_image(tmp_path / "padded.jpg"), cv2.imread(str(tmp_path / "padded.jpg")))
    np.testing.assert_array_equal(read_image(tmp_path / "padded.jpg"), cv2.imdecode(np.frombuffer(data, np.uint8), 1))
    assert "extraneous bytes before marker 0xd9" in capfd.readouterr().err


def test_an_image_opencv_cannot_decode_names_opencvs_reason_in_one_line(tmp_path, capfd):
    """Before: a valid TIFF OpenCV 5.0 cannot decode (EXIF orientation 8), or a PNG cut short, was refused as
    "not a decodable image (corrupt, truncated or not an image file)" after OpenCV's raw multi-line log on
    stderr naming /proc/self/fd/N instead of the file. Now OpenCV's reason is in the one-line message."""
    import cv2

    from zoo_core.api.errors import InputError
    from zoo_core.api.imaging import read_image

    skimage_data = pytest.importorskip("skimage.data")
    png = cv2.imencode(".png", skimage_data.astronaut())[1].tobytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    capfd.readouterr()
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "cut.png")
    assert str(info.value) == (f"{tmp_path / 'cut.png'}: not a decodable image: OpenCV could not decode it: "
                               "libpng error: Read Error")
    assert capfd.readouterr().err == ""

    pil = pytest.importorskip("PIL.Image")
    exif = pil.Exif()
    exif[0x0112] = 8
    pil.fromarray(skimage_data.astronaut()[:, 60:460]).save(tmp_path / "exif8.tiff", exif=exif)
    if cv2.imread(str(tmp_path / "exif8.tiff")) is not None:
        pytest.skip("this OpenCV decodes the TIFF")
    capfd.readouterr()
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "exif8.tiff")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'exif8.tiff'}: not a decodable image: OpenCV could not decode it: "), msg
    assert "\n" not in msg and "/proc/self/fd" not in msg and "[ERROR" not in msg and "loadsave.cpp" not in msg, msg
    assert capfd.readouterr().err == ""


def _padded_jpeg(tmp_path):
    """A whole JPEG with padding before its end marker: libjpeg warns ("extraneous bytes"), the pixels are intact."""
    import cv2

    skimage_data = pytest.importorskip("skimage.data")
    data = cv2.imencode(".jpg", cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))[1].tobytes()
    path = tmp_path / "padded.jpg"
    path.write_bytes(data[:-2] + bytes(10) + b"\xff\xd9")
    return path


def test_another_threads_line_quoting_a_libjpeg_warning_does_not_refuse_a_good_image(tmp_path, capfd, monkeypatch):
    """Review: stage=predict on_error=skip failed on good images, since the capture of fd 2 around a decode also took
    the feeder thread's 'skipped <cut.jpg>: ... (libjpeg: Corrupt JPEG data: premature end ...)' log line for the
    good image's own warning. Only a whole line as libjpeg writes it counts; the other thread's line is printed."""
    import cv2

    import zoo_core.api.imaging as imaging

    good = _padded_jpeg(tmp_path)
    line = ("warning: skipped /data/b_cut.jpg: not a decodable image: a JPEG cut short (libjpeg: Corrupt JPEG data: "
            "premature end of data segment; ...)")
    real = imaging._decode

    def decode_while_another_thread_logs(cv2_, f, p):
        os.write(2, (line + "\n").encode())  # what the other thread writes to fd 2 meanwhile
        return real(cv2_, f, p)

    monkeypatch.setattr(imaging, "_decode", decode_while_another_thread_logs)
    capfd.readouterr()
    np.testing.assert_array_equal(imaging.read_image(good), cv2.imread(str(good)))
    err = capfd.readouterr().err
    assert line in err and "extraneous bytes before marker 0xd9" in err  # both printed, neither lost


def test_a_decoder_warning_with_stderr_a_closed_pipe_is_lost_quietly(tmp_path):
    """Review: `zoo run ... stage=predict 2>&1 | head` failed an image with 'BrokenPipeError in preprocess' when
    libjpeg warned about it: the warning written back to a stderr nobody reads raised; cv2.imread's own write did not."""
    import cv2

    from zoo_core.api.imaging import read_image

    good = _padded_jpeg(tmp_path)
    r, w = os.pipe()
    os.close(r)
    saved = os.dup(2)
    try:
        os.dup2(w, 2)
        img = read_image(good)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    np.testing.assert_array_equal(img, cv2.imread(str(good)))


def test_a_process_started_without_stderr_still_reads_its_images(tmp_path):
    """Review: with fd 2 closed (`2>&-`, a daemon), the image file opened by read_image got fd 2 and the capture
    replaced it with its own empty file: every image was 'not a decodable image'. zoo's entry point also points a
    closed fd 0-2 at /dev/null."""
    good = _padded_jpeg(tmp_path)
    code = ("import os, sys; from zoo_core.api.imaging import read_image; "
            f"print(read_image({str(good)!r}).shape); "
            "from zoo_core.cli import _standard_fds_open; _standard_fds_open(); print(os.readlink('/proc/self/fd/2'))")
    proc = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -c "$0" 2>&-', code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.split("\n")[:2] == ["(512, 512, 3)", "/dev/null"], proc.stdout
