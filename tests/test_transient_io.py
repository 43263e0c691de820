"""A read error that is the machine's, not the file's (EIO on a network filesystem, no
memory), is never recorded as a bad-file verdict: ``skip_bad_files`` would drop a good image
from every later run. The files are real; the fault is planted in Pillow's ``Image.open``
for one file, once, as a flaky filesystem would fail one read."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_bad_data import CACHE, image_folder, items, set_up

from data_modules.bad_files import TransientReadError

FAULTS = {"EIO": lambda: OSError(errno.EIO, "Input/output error"), "MemoryError": MemoryError}


def fail_once(monkeypatch: pytest.MonkeyPatch, path: Path, error: BaseException) -> None:
    """The next ``Image.open`` of ``path`` raises ``error``; every other open works."""
    real_open = Image.open
    pending = [error]

    def open_(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        if pending and isinstance(fp, str | Path) and Path(fp) == path:
            raise pending.pop()
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_)


@CACHE
@pytest.mark.parametrize("fault", list(FAULTS))
def test_transient_read_error_stops_setup_naming_the_file_and_records_no_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded_cache: bool,
        fault: str) -> None:
    root = tmp_path / "images"
    flaky = image_folder(root)[3]
    fail_once(monkeypatch, flaky, FAULTS[fault]())

    with pytest.raises(TransientReadError) as raised:
        set_up(root, decoded_cache=decoded_cache, skip_bad_files=True)
    assert str(flaky) in str(raised.value)
    assert "nothing was recorded" in str(raised.value)

    data = set_up(root, decoded_cache=decoded_cache, skip_bad_files=True)  # it recovered
    assert flaky in items(data)


def test_a_file_that_is_really_bad_is_still_recorded(tmp_path: Path) -> None:
    root = tmp_path / "images"
    image_folder(root)
    (root / "dog" / "notes.jpg").write_text("not a picture")
    data = set_up(root, decoded_cache=False, skip_bad_files=True)
    assert root / "dog" / "notes.jpg" not in items(data)
    assert list((tmp_path / "cache" / "scans").glob("*.json"))
