"""report.html for a run and a sweep: rendered in a real headless Chromium (DevTools protocol over a pipe),
no console errors, every picture decoded, the numbers of the run's files on the page."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from zoo_core.reports.html import column_decimals, fmt_number, render_run_report, render_sweep_report, write_report
from zoo_core.reports.html import main as html_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGE_WIDTH = 1200


def zoo_run_ok(cwd: Path, cache_dir: Path, *args: str) -> None:
    """``zoo <args>`` in ``cwd`` with the session's dataset cache (as tests/conftest.py's ``zoo`` fixture)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_DISABLE_PLUGINS", "PYTHONPATH")}
    env.update(ZOO_CACHE_DIR=str(cache_dir), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "zoo_core.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


class Chromium:
    """Headless Chromium driven through the DevTools protocol on fds 3/4 (``--remote-debugging-pipe``).

    No WebDriver and no downloads: Debian's ``chromium`` package only.
    """

    def __init__(self, profile: Path, log: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--mute-audio", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        shell = f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(["bash", "-c", shell, "bash", *args], pass_fds=(cmd_r, out_w),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, timeout: float = 60) -> dict:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method and ev.get("sessionId") == session:
                return self.events.pop(i)
        return self._wait(lambda m: m.get("method") == method and m.get("sessionId") == session, timeout, keep=False)

    def _wait(self, match, timeout: float, keep: bool = True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if match(msg):
                    return msg
                if "method" in msg:
                    self.events.append(msg)
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError(f"no answer from chromium (exit code {self.proc.poll()})")
            ready, _, _ = select.select([self._out_r], [], [], left)
            if ready:
                chunk = os.read(self._out_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk

    def open(self, path: Path) -> dict:
        """Load ``path``; return its text, images, console problems, layout facts and a full-page screenshot."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=s)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": PAGE_WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False}, s)
        self.events.clear()
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, s)
        self.wait_event("Page.loadEventFired", s)

        def js(expr: str):
            res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True}, s)
            if "exceptionDetails" in res:
                raise RuntimeError(res["exceptionDetails"])
            return res["result"].get("value")

        js("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
        facts = {
            "text": js("document.body.innerText"),
            "images": js("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"),
            "resources": js("performance.getEntriesByType('resource').map(e => e.name)"),
            "scroll_width": js("document.documentElement.scrollWidth"),
            "height": js("document.documentElement.scrollHeight"),
            "title": js("document.title"),
        }
        self.send("Emulation.setDeviceMetricsOverride", {"width": PAGE_WIDTH, "height": int(facts["height"]),
                                                         "deviceScaleFactor": 1, "mobile": False}, s)
        facts["screenshot"] = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, s)["data"])
        problems = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                details = p["exceptionDetails"]
                problems.append(f"exception: {details.get('text')} "
                                f"{(details.get('exception') or {}).get('description', '')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                problems.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                problems.append(f"log: {p['entry']['text']}")
        facts["problems"] = problems
        self.send("Target.closeTarget", {"targetId": target})
        return facts

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)
        self._log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("ZOO_REQUIRE_BROWSER"):
            pytest.fail("chromium not found and ZOO_REQUIRE_BROWSER is set (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); .ci/run installs it")
    d = tmp_path_factory.mktemp("chromium")
    b = Chromium(d / "profile", d / "chromium.log")
    yield b
    b.close()


def _assert_clean(page: dict, pngs: list[bytes]) -> None:
    assert page["problems"] == [], page["problems"]
    assert page["resources"] == []  # self-contained: nothing fetched
    assert page["scroll_width"] <= PAGE_WIDTH  # no horizontal overflow
    assert len(page["images"]) == len(pngs)
    for (alt, complete, w, h), data in zip(page["images"], pngs):
        assert complete and [w, h] == list(_png_size(data)), alt
    shot = page["screenshot"]
    assert _png_size(shot)[0] == PAGE_WIDTH and len(shot) > 20_000


# -- the harness notices what it must -------------------------------------------------------------

def test_the_browser_check_catches_errors_and_broken_pictures(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><title>t</title><img alt="x" src="data:image/png;base64,AAAA">'
                   '<script>console.error("boom"); undefined_function();</script><p>hello</p>')
    page = browser.open(bad)
    assert page["text"].strip() == "hello"
    assert any("boom" in p for p in page["problems"]) and any("undefined_function" in p for p in page["problems"])
    assert page["images"] == [["x", True, 0, 0]]


# -- a real run ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_record(tmp_path_factory, cache_dir):
    """A real CenterFace eval (6 images of the bundled sample), its metrics.json completed the way the
    accuracy feature writes it (reference verdicts, 95% intervals)."""
    d = tmp_path_factory.mktemp("eval")
    zoo_run_ok(d, cache_dir, "run", "model=centerface", "stage=eval", "dataset.limit=6", "work_dir=run")
    run = d / "run" / "eval"
    m = json.loads((run / "metrics.json").read_text())
    values = m["metrics"]
    m["reference"] = {"easy": {"expected": round(values["easy"], 4), "tolerance": 0.01, "source": "test", "within": True},
                      "hard": {"expected": values["hard"] + 0.2, "tolerance": 0.01, "source": "test <b>", "within": False}}
    m["ci95"] = {"easy": [values["easy"] - 0.05, min(1.0, values["easy"] + 0.02)]}
    (run / "metrics.json").write_text(json.dumps(m))
    return run


def test_run_report_in_the_browser(browser, eval_record):
    out = write_report(eval_record)
    assert out == eval_record / "report.html"
    page = browser.open(out)
    pngs = [p.read_bytes() for p in sorted(eval_record.glob("*.png"))]
    assert [p.name for p in sorted(eval_record.glob("*.png"))] == ["pr_curves.png"]
    _assert_clean(page, pngs)
    text = page["text"]
    m = json.loads((eval_record / "metrics.json").read_text())
    perf = json.loads((eval_record / "perf.json").read_text())
    for name, value in m["metrics"].items():
        assert f"{value:.4f}" in text, name  # every metric, 4 decimals
    assert "✓ within" in text and "✗ outside" in text and "test <b>" in text
    lo, hi = m["ci95"]["easy"]
    assert f"{lo:.4f} – {hi:.4f}" in text
    assert f"{m['reference']['hard']['expected']:.4f} ± 0.01" in text
    assert f"{perf['throughput_img_s']:.2f}" in text and f"{perf['device_ms_per_img']:.2f} ms/img" in text
    assert f"onnxruntime\t{metadata.version('onnxruntime')}" in text
    assert "widerface_sample" in text and page["title"] == "zoo · centerface · eval · widerface_sample"
    (eval_record.parent / "run_report.png").write_bytes(page["screenshot"])  # to look at


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, cache_dir):
    d = tmp_path_factory.mktemp("sweep")
    zoo_run_ok(d, cache_dir, "run", "-m", "model=fixture", "stage=perf", "batch_size=1,2,4", "stage.loop=3",
               "stage.warmup=1", "hydra.sweep.dir=sweep")
    return d / "sweep"


@pytest.mark.needs_torch
def test_sweep_report_in_the_browser(browser, sweep_dir):
    import csv

    page = browser.open(write_report(sweep_dir))
    _assert_clean(page, [(sweep_dir / "sweep_report.png").read_bytes()])
    text = page["text"]
    rows = list(csv.DictReader((sweep_dir / "sweep_report.csv").open()))
    assert len(rows) == 3 and "3 jobs" in text and "0 failed" in text
    thr_places = column_decimals([float(r["throughput"]) for r in rows])  # (one number of decimals per column)
    lat_places = column_decimals([float(r["latency_mean_ms"]) for r in rows])
    for r in rows:
        assert f"{float(r['throughput']):,.{thr_places}f}" in text
        assert f"{float(r['latency_mean_ms']):,.{lat_places}f}" in text
        assert f"\t{r['@batch_size']}\tok\t" in text
    assert "stage.loop 3" in text  # constant overrides are stated once, not as columns
    assert page["title"] == "zoo · sweep · fixture · perf"


# -- without a browser -----------------------------------------------------------------------------

def test_page_is_self_contained_and_escapes_everything(tmp_path):
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".png", np.full((20, 30, 3), 200, np.uint8))
    (tmp_path / "plot.png").write_bytes(buf.tobytes())
    (tmp_path / "metrics.json").write_text(json.dumps({
        "schema": 1, "model": "m<script>", "dataset": "d", "stage": "eval", "images": 3,
        "metrics": {"<img src=x onerror=alert(1)>": 0.5, "AP/person": 0.25, "AP/cat": None},
        "info": {"note": "a & b"}, "skipped": ["bad.png: truncated"]}))
    page = render_run_report(tmp_path)
    assert "<script" not in page and "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "a &amp; b" in page and "AP per class (2)" in page and "1 skipped" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page
    uri = page.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(uri) == (tmp_path / "plot.png").read_bytes()
    assert "id=\"performance\"" not in page  # no perf.json: no section


def test_fifos_in_the_run_dir_are_left_out_unopened(tmp_path):
    """Before: ``python -m zoo_core.reports.html <dir>`` blocked forever on a FIFO named ``*.png`` (or ``perf.json``)."""
    import threading

    (tmp_path / "metrics.json").write_text(json.dumps({"schema": 1, "model": "m", "stage": "eval",
                                                       "metrics": {"AP": 0.5}}))
    fifos = [tmp_path / "pr_curves.png", tmp_path / "perf.json"]
    for f in fifos:
        os.mkfifo(f)
    out: list = []
    t = threading.Thread(target=lambda: out.append(render_run_report(tmp_path)), daemon=True)
    t.start()
    t.join(10)
    blocked = t.is_alive()
    while t.is_alive():  # the old code: unblock its reads so the test can end
        for f in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        t.join(0.1)
    assert not blocked and len(out) == 1
    assert "AP" in out[0] and "data:image/png" not in out[0] and 'id="performance"' not in out[0]


def test_missing_inputs_say_what_is_missing(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no metrics.json, perf.json or run.json"):
        render_run_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="no sweep_report.csv"):
        render_sweep_report(tmp_path)
    assert html_main([str(tmp_path / "nope")]) == 2 and "no such directory" in capsys.readouterr().err
    assert html_main([str(tmp_path)]) == 2 and "no metrics.json" in capsys.readouterr().err


@pytest.mark.parametrize("name, key, record", [
    ("metrics.json", "metrics", {"metrics": [1, 2]}), ("metrics.json", "info", {"metrics": {"AP": 0.5}, "info": [1]}),
    ("metrics.json", "reference", {"metrics": {"AP": 0.5}, "reference": ["x"]}),
    ("metrics.json", "ci95", {"metrics": {}, "ci95": "x"}),
    ("metrics.json", "skipped", {"metrics": {"AP": 0.5}, "skipped": {"a": 1}}),
    ("run.json", "config", {"config": [1]}), ("run.json", "versions", {"versions": "abc"}),
    ("run.json", "inputs", {"inputs": [1]}),
])
def test_a_record_section_of_the_wrong_type_is_one_line_naming_the_file(tmp_path, capsys, name, key, record):
    """Before: AttributeError / TypeError with a traceback from ``python -m zoo_core.reports.html``."""
    (tmp_path / name).write_text(json.dumps({"schema": 1, **record}))
    assert html_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / name}: {key!r} is a ") and "not a JSON" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "report.html").exists()


def test_config_sections_of_the_wrong_type_are_left_out_of_the_title(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": {"model": [1], "stage": "x", "dataset": 5}}))
    assert "<title>zoo · ? · </title>" in render_run_report(tmp_path)


def test_number_formats():
    assert [fmt_number(v) for v in (0.96877, 12.345, 16803.99, 7293505, None, True, 24)] == \
        ["0.9688", "12.35", "16,804", "7,293,505", "—", "yes", "24"]
    assert fmt_number(0.5, trim=True) == "0.5" and fmt_number(0.05, trim=True) == "0.05"
    assert column_decimals([0.1, 9.5]) == 4 and column_decimals([9.5, 12.0]) == 2 and column_decimals([1, 2]) is None


BIG = "1" + "0" * 400  # an integer beyond the float range: float() raises OverflowError


@pytest.mark.parametrize("key", ["throughput_img_s", "host_preprocess_ms_per_img", "device_ms_per_img",
                                 "postprocess_ms_per_img", "device_call_ms.mean", "device_call_ms.p99"])
def test_a_400_digit_number_in_perf_json_is_shown_not_a_traceback(tmp_path, capsys, key):
    """Before: `python -m zoo_core.reports.html <run dir>` died with an OverflowError traceback (fmt_measure, the
    per-part float())."""
    perf = {"images": 4, "throughput_img_s": 12.5, "host_preprocess_ms_per_img": 1.0, "device_ms_per_img": 2.0,
            "postprocess_ms_per_img": 0.5, "device_call_ms": {"mean": 3.0, "p99": 4.0}}
    text = json.dumps(perf)
    old = json.dumps(perf["device_call_ms"][key.split(".")[1]] if "." in key else perf[key])
    field = key.split(".")[-1]
    text = text.replace(f'"{field}": {old}', f'"{field}": {BIG}', 1)
    assert BIG in text
    (tmp_path / "perf.json").write_text(text)
    assert html_main([str(tmp_path)]) == 0
    assert "100000...(401 digits)" in (tmp_path / "report.html").read_text()


def test_a_400_digit_cell_in_the_sweep_csv_is_shown_not_a_traceback(tmp_path):
    """Before: render_sweep_report died with an OverflowError (column_decimals' float())."""
    (tmp_path / "sweep_report.csv").write_text(f"job,status,throughput\n0,ok,{BIG}\n1,ok,2.5\n")
    page = render_sweep_report(tmp_path)
    assert "100000...(401 digits)" in page and "2.50" in page
    assert fmt_number(int(BIG)) == "100000...(401 digits)"


def test_a_sweep_column_of_numbers_shares_one_number_of_decimals(tmp_path):
    """Before: column_decimals got a generator it read twice, so every column fell back to each cell's own format
    (0.9688 beside 12.35 in one column)."""
    (tmp_path / "sweep_report.csv").write_text("job,status,throughput,metric:AP\n0,ok,0.5,0.96877\n1,ok,12.25,1\n")
    page = render_sweep_report(tmp_path)
    assert '<td class="num">0.50</td>' in page and '<td class="num">12.25</td>' in page
    assert '<td class="num">0.9688</td>' in page and '<td class="num">1.0000</td>' in page


def _job_page(sweep: Path, job: str) -> None:
    (sweep / job / "eval").mkdir(parents=True)
    (sweep / job / "eval" / "report.html").write_text("<!doctype html>")


def test_a_job_link_resolves_to_the_jobs_page(tmp_path):
    _job_page(tmp_path, "3")
    (tmp_path / "sweep_report.csv").write_text("job,status\n3,ok\n")
    page = render_sweep_report(tmp_path)
    href = page.split('<a href="', 1)[1].split('"', 1)[0]
    assert href == "./3/eval/report.html" and (tmp_path / href).is_file()


def test_a_job_page_under_a_folder_name_that_is_not_utf8_is_linked_by_its_bytes(tmp_path):
    """Before: ``urllib.parse.quote`` of a folder named with the byte 0xff (a surrogate in Python's str) raised
    ``UnicodeEncodeError``: a traceback out of ``python -m zoo_core.reports.html``, exit 1."""
    import os
    from urllib.parse import unquote_to_bytes

    stage = tmp_path / "0" / os.fsdecode(b"\xff")
    stage.mkdir(parents=True)
    (stage / "report.html").write_text("<!doctype html>")
    (tmp_path / "sweep_report.csv").write_text("job,status\n0,ok\n")
    page = render_sweep_report(tmp_path)
    href = page.split('<a href="', 1)[1].split('"', 1)[0]
    assert href == "./0/%FF/report.html"
    assert (tmp_path / os.fsdecode(unquote_to_bytes(href))).is_file()


def test_a_job_folder_named_like_a_url_scheme_links_to_its_page_not_a_script(tmp_path):
    """Before: a job folder ``javascript:alert(document.domain)`` gave ``<a href="javascript:alert(...)/...">``, a
    script run by a click on the sweep page."""
    job = "javascript:alert(document.domain)"
    _job_page(tmp_path, job)
    (tmp_path / "sweep_report.csv").write_text(f"job,status\n{job},ok\n")
    page = render_sweep_report(tmp_path)
    href = page.split('<a href="', 1)[1].split('"', 1)[0]
    assert href == "./javascript%3Aalert%28document.domain%29/eval/report.html"
    from urllib.parse import unquote
    assert (tmp_path / unquote(href)).is_file()  # still the job's page
    assert 'href="javascript' not in page


def test_a_job_outside_the_sweep_dir_gets_no_link_and_a_warning(tmp_path, caplog, capsys):
    """Before: an absolute job path in sweep_report.csv was a ValueError traceback (relative_to), exit 1; a ``..``
    job linked a page outside the sweep."""
    outside = tmp_path / "elsewhere"
    _job_page(outside, "9")
    sweep = tmp_path / "sweep"
    _job_page(sweep, "1")
    (sweep / "sweep_report.csv").write_text(f"job,status\n{outside / '9'},ok\n../elsewhere/9,ok\n1,ok\n")
    with caplog.at_level("WARNING", logger="zoo"):
        assert html_main([str(sweep)]) == 0
    page = (sweep / "report.html").read_text()
    assert page.count("<a href=") == 1 and '<a href="./1/eval/report.html">' in page
    warned = [r.getMessage() for r in caplog.records]
    assert sum("is not a folder of the sweep dir" in m for m in warned) == 2


def test_an_unreadable_record_is_named_in_a_warning_not_left_out_silently(tmp_path, caplog, capsys):
    """Before: a truncated metrics.json was left out of report.html with no word, exit 0; with perf.json also
    unreadable the error said "no metrics.json, perf.json or run.json" although both were there."""
    (tmp_path / "metrics.json").write_text('{"metrics": {"easy": 0.9}, "model": "centerface"\n')
    (tmp_path / "perf.json").write_text(json.dumps({"images": 3, "throughput_img_s": 12.5}))
    with caplog.at_level("WARNING", logger="zoo"):
        assert html_main([str(tmp_path)]) == 0
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning == (f"{tmp_path / 'metrics.json'}: not readable as JSON (Expecting ',' delimiter: line 2 column 1 "
                       "(char 49)); the report leaves it out")
    caplog.clear()
    (tmp_path / "perf.json").write_text("[1, 2]")
    with caplog.at_level("WARNING", logger="zoo"):
        assert html_main([str(tmp_path)]) == 2
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "not readable as JSON (Expecting ',' delimiter: line 2 column 1 (char 49)); the report leaves it out",
        "a JSON list, not the object zoo writes; the report leaves it out"]
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path}: metrics.json and perf.json are not readable (the warnings above say why): " \
                  "nothing to report\n"
