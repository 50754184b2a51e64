"""Text from a model, a checkpoint, a job record or a dataset reaches the terminal with its control characters shown
as escapes (zoo_core.printable): an ESC or CR in it cannot set the window title, erase zoo's own error line and
print a forged one, or hide text. Before: those bytes were printed raw."""
from __future__ import annotations

import logging
import warnings

import pytest

from zoo_core.api.errors import ZooError
from zoo_core.cli import main as zoo_main
from zoo_core.printable import printable
from zoo_core.reports.logfmt import ConsoleFormatter

EVIL = "\x1b]0;PWNED-TITLE\x07\x1b[2K\rerror: forged line\nsecond"
#: As onnxruntime's message carries a node name once zoo flattened its whitespace but the CR (kept here).
NAME = "\x1b]0;PWNED-TITLE\x07\x1b[2K\rerror: forged line"


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0]


def test_printable_shows_controls_as_escapes_and_keeps_newlines_only_when_asked():
    assert printable(EVIL) == "\\x1b]0;PWNED-TITLE\\x07\\x1b[2K\\rerror: forged line\nsecond"
    assert printable(EVIL, newlines=False) == "\\x1b]0;PWNED-TITLE\\x07\\x1b[2K\\rerror: forged line\\nsecond"
    assert printable("a\x7fb\x9bc\x00d\te µ ü —") == "a\\x7fb\\x9bc\\x00d\te µ ü —"  # DEL, C1 CSI, NUL; text kept
    assert printable(3) == "3"


def test_printable_shows_bidi_controls_and_line_separators_as_escapes():
    """Before: a file named ``evil\u202egpj.onnx`` printed as ``evilxnno.jpg`` in zoo's error line (the
    RIGHT-TO-LEFT OVERRIDE reorders what follows), and U+2028 broke the line where zoo wrote none."""
    assert printable("evil\u202egpj.onnx") == "evil\\u202egpj.onnx"
    text = "".join(map(chr, (0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F), *range(0x2066, 0x206A))))
    assert printable(text) == "".join(f"\\u{ord(c):04x}" for c in text)
    assert printable("\u200d\u05d0\u0627 ok") == "\u200d\u05d0\u0627 ok"  # ZWJ, Hebrew and Arabic letters kept


def test_console_log_lines_show_controls_as_escapes_and_keep_newlines():
    fmt = ConsoleFormatter("%(message)s")
    record = logging.LogRecord("zoo", logging.WARNING, __file__, 1, "category '%s' has\nno glyph", (NAME,), None)
    text = fmt.format(record)
    assert text == "warning: category '\\x1b]0;PWNED-TITLE\\x07\\x1b[2K\\rerror: forged line' has\nno glyph"
    assert not _raw_controls(text)


def test_a_python_warning_routed_to_the_console_is_shown_escaped(capsys):
    """matplotlib's 'Glyph 27 (\\x1b) missing' warning (a category name with an ESC) reaches the console through
    logging.captureWarnings and zoo's console formatter."""
    handler = logging.StreamHandler()
    handler.setFormatter(ConsoleFormatter("%(message)s"))
    logger = logging.getLogger("py.warnings")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            logging.captureWarnings(False)  # (an earlier in-process zoo run left it on, bound to that test's hook)
            logging.captureWarnings(True)
            try:
                warnings.warn("Glyph 27 (\x1b) missing from font(s) DejaVu Sans.", UserWarning, stacklevel=1)
            finally:
                logging.captureWarnings(False)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Glyph 27 (\\x1b) missing" in err and not _raw_controls(err)


def test_the_cli_error_line_shows_an_untrusted_name_escaped_and_keeps_its_hint(tmp_path, monkeypatch, capsys,
                                                                              cache_dir):
    """Before: `zoo run ... model_file=evilnode.onnx` printed onnxruntime's message with the node name's raw ESC
    sequences: the window title set, zoo's `error:` line erased."""
    import zoo_core.runs.run_stage as run_stage

    def failing(ctx):
        raise ZooError(f"onnxruntime run failed: node '{NAME}'", path=tmp_path / "m.onnx", hint="re-export it")

    monkeypatch.setattr(run_stage, "run_stage", failing)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        zoo_main(["run", "model=fixture", "backend=oracle", "num_workers=0", "dataset.limit=1",
                  f"work_dir={tmp_path / 'run'}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("error: "))
    assert line == (f"error: {tmp_path / 'm.onnx'}: onnxruntime run failed: node "
                    "'\\x1b]0;PWNED-TITLE\\x07\\x1b[2K\\rerror: forged line'")
    assert "\n  hint: re-export it" in err and not _raw_controls(err)


def test_a_stage_summary_shows_a_plugin_value_escaped(tmp_path, capsys):
    from types import SimpleNamespace

    from zoo_core.reports.terminal import TerminalReporter

    cfg = SimpleNamespace(model=SimpleNamespace(name="fixture"))
    result = {"dataset": "coco", "images": 2, "metrics": {"AP": 0.5}, "info": {"evaluator": NAME}}
    TerminalReporter().zoo_stage_finished(cfg=cfg, stage="eval", run_dir=tmp_path, result=result)
    out = capsys.readouterr().out
    assert "  (evaluator: \\x1b]0;PWNED-TITLE\\x07\\x1b[2K\\rerror: forged line)\n" in out and not _raw_controls(out)
    assert out.startswith("fixture on coco (2 images):\n  AP           0.5000\n")
