"""Publishing a night: hard links into results/<night>/, copies across file systems."""

import errno
import os

from bandersnake.publish import links as publish


def make_work(tmp_path):
    work = tmp_path / "work" / "N_20250101"
    (work / "calib" / "lists").mkdir(parents=True)
    (work / "logs").mkdir()
    (work / "calib" / "master_bias.fits").write_text("bias")
    (work / "calib" / "lists" / "1_bias.list").write_text("a\n")
    (work / "logs" / "inventory.log").write_text("log")
    (work / "scratch.tmp").write_text("not a product")
    return work


def test_links_products_and_logs(tmp_path):
    work = make_work(tmp_path)
    out = tmp_path / "results" / "N_20250101"
    n = publish.publish_night([work / "calib/master_bias.fits", work / "calib/lists"], work, out)
    assert n == 3
    assert os.path.samefile(out / "calib/master_bias.fits", work / "calib/master_bias.fits")
    assert (out / "calib/lists/1_bias.list").read_text() == "a\n"
    assert (out / "logs/inventory.log").exists()
    assert not (out / "scratch.tmp").exists()  # only declared products and logs


def test_copies_across_file_systems(tmp_path, monkeypatch):
    work = make_work(tmp_path)

    def no_cross_device_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(publish.os, "link", no_cross_device_links)
    out = tmp_path / "results" / "N_20250101"
    publish.publish_night([work / "calib/master_bias.fits"], work, out, extra_dirs=())
    assert (out / "calib/master_bias.fits").read_text() == "bias"
    assert not os.path.samefile(out / "calib/master_bias.fits", work / "calib/master_bias.fits")
