"""The night summary's per-table line: frame-wide flags counted in frames, the others per star."""

import numpy as np
from astropy.table import Table

from bandersnake.analysis import io as F
from bandersnake.publish.summary import describe_table


def test_describe_table_counts_frame_flags_once_and_star_flags_per_star(tmp_path):
    flag = np.zeros((5, 3), np.int32)
    flag[1, :] |= F.FLAG_REACQUIRED          # the kernel sets frame-wide bits on every star
    flag[3, :] |= F.FLAG_LOST
    flag[4, :] |= F.FLAG_LOST
    flag[:, 2] |= F.FLAG_SATURATED            # star 2 saturated in all 5 frames
    flag[2, 0] |= F.FLAG_BAD_PIXEL
    path = tmp_path / "photometry_aper5.fits"
    Table({"flag": flag}).write(path)
    line = describe_table(path)
    assert line == ("photometry_aper5.fits: 5 frames (tracking lost: 2 frames; saturated: star2x5; "
                    "bad pixel: star0x1; re-acquired: 1 frame)")


def test_describe_table_one_star(tmp_path):
    # A target with one star: the flag column is 1-D.
    path = tmp_path / "centroids.fits"
    Table({"flag": np.array([0, F.FLAG_CORRUPT, 0], np.int32)}).write(path)
    assert describe_table(path) == "centroids.fits: 3 frames (corrupt frame: 1 frame)"


def test_describe_transit_says_which_of_ingress_and_egress_the_frames_cover(tmp_path):
    import yaml

    from bandersnake.publish.summary import describe_transit

    path = tmp_path / "T" / "transit" / "transit_fit.yaml"
    path.parent.mkdir(parents=True)
    value = {"median": 0.01, "plus": 0.001, "minus": 0.001}
    fit = {"success": True, "rp_rs_sq": value, "max_flux_drop": value, "t0": {**value, "median": 2460000.5},
           "ingress_egress_in_frames": {"ingress": 1.0, "egress": 0.1}}
    path.write_text(yaml.safe_dump(fit))
    assert describe_transit(path).startswith("T: transit fit: rp_rs_sq (Rp/R*)^2 10.00 +1.00 -1.00 ppt")
    assert "neither" not in describe_transit(path)
    fit["ingress_egress_in_frames"] = {"ingress": 0.2, "egress": 0.0}
    path.write_text(yaml.safe_dump(fit))
    assert describe_transit(path).endswith("the frames cover neither ingress nor egress: T0 and depth rest on the priors")
    # a partial transit: the contact it saw, which it measures directly
    fit["ingress_egress_in_frames"] = {"ingress": 0.0, "egress": 0.99}
    fit["t1"] = {"median": 2460000.44, "plus": 0.004, "minus": 0.003}
    fit["t4"] = {"median": 2460000.56, "plus": 0.0012, "minus": 0.0011}
    path.write_text(yaml.safe_dump(fit))
    assert describe_transit(path).endswith("; only the egress in the frames: last contact 2460000.56000 +0.00120 "
                                           "-0.00110 BJD_TDB")
    # fitted with b free (uniform): where to give a published b
    fit["priors"] = {"b_fixed": None, "b_gaussian": None}
    path.write_text(yaml.safe_dump(fit))
    assert describe_transit(path).endswith("BJD_TDB (T0 from it leans on b: give b and b_err when published)")
    fit["priors"] = {"b_fixed": None, "b_gaussian": [0.1, 0.05]}
    path.write_text(yaml.safe_dump(fit))
    assert describe_transit(path).endswith("-0.00110 BJD_TDB")
