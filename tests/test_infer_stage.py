"""``stage=infer inputs_dir=``: which .bin layouts it reads, and what it says about one it does not (in-process)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_om_record import _ctx
from zoo_core.api.errors import ZooError


def test_bin_files_in_per_event_sub_folders_are_named_with_the_layout_infer_reads(fixture_cfg, tmp_path):
    """The seed's older CenterFace prep writes <out>/<event>/<img>.bin (REFERENCE 3.4 step 4). Before: infer said only
    'no input .bin files found' about the folder that held them."""
    from zoo_core.stages import infer_stage

    nested = tmp_path / "prep"
    for event, img in (("0--Parade", "0_Parade_1"), ("1--Handshaking", "1_Handshaking_2")):
        (nested / event).mkdir(parents=True)
        np.zeros((1, 64, 64), np.float32).tofile(nested / event / f"{img}.bin")
    with pytest.raises(ZooError) as exc:
        infer_stage.run(_ctx(fixture_cfg, tmp_path / "run", "infer", inputs_dir=str(nested)))
    text = str(exc.value)
    assert "no input .bin files found in the folder itself, but 2 lie one level down, in 2 sub-folder(s) " \
           "(e.g. 0--Parade/0_Parade_1.bin)" in text and "<inputs_dir>/<id>.bin" in text
    assert exc.value.path == nested and "move the .bin files into one folder" in exc.value.hint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ZooError, match="empty: no input .bin files found$"):
        infer_stage.run(_ctx(fixture_cfg, tmp_path / "run", "infer", inputs_dir=str(empty)))
