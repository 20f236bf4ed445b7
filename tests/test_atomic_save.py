"""A checkpoint streamed to its temporary file (``atomic_torch_save``) fails the way a
small write does: a disk that fills part-way through is :class:`DiskFull` naming the file,
an interrupt part-way through is the interrupt, and neither leaves a file behind."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from larsvae import utils
from larsvae.utils import DiskFull, atomic_torch_save

PAYLOAD = {"weights": torch.arange(200_000, dtype=torch.float32), "step": 3}  # ~800 KB


@pytest.fixture
def fail_after(monkeypatch):
    """The temporaries accept ``state['bytes']`` bytes, then raise ``state['exc']``."""
    state: dict = {"bytes": 0, "exc": None}
    real = utils._open_fd

    def open_fd(fd, mode):
        f = real(fd, mode)
        write, budget = f.write, [state["bytes"]]

        def limited(data):
            n = len(memoryview(data).cast("B"))
            if n > budget[0]:
                raise state["exc"]()
            budget[0] -= n
            return write(data)

        f.write = limited
        return f

    monkeypatch.setattr(utils, "_open_fd", open_fd)
    return state


def _no_files(folder) -> bool:
    return sorted(os.listdir(folder)) == []


@pytest.mark.parametrize("after", [0, 100_000, 400_000, 700_000])
def test_a_disk_full_part_way_through_is_disk_full(tmp_path, fail_after, after):
    fail_after.update(bytes=after, exc=lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    out = tmp_path / "ck" / "model.pt"
    with pytest.raises(DiskFull, match="model.pt"):
        atomic_torch_save(PAYLOAD, out)
    assert _no_files(out.parent)


@pytest.mark.parametrize("after", [0, 400_000])
def test_an_interrupt_part_way_through_is_the_interrupt(tmp_path, fail_after, after):
    fail_after.update(bytes=after, exc=KeyboardInterrupt)
    out = tmp_path / "model.pt"
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(PAYLOAD, out)
    assert _no_files(tmp_path)


def test_the_saved_file_loads_back(tmp_path):
    out = tmp_path / "model.pt"
    atomic_torch_save(PAYLOAD, out)
    back = torch.load(out, weights_only=True)
    assert torch.equal(back["weights"], PAYLOAD["weights"]) and back["step"] == 3
