"""All steps of one template in one process (tests, benchmarks, a quick look without Snakemake).

The workflow runs the same functions as separate jobs: ``templates_psf`` -> ``templates_mapping``
-> one ``templates_tile`` per tile -> ``templates_fit`` -> ``templates_template`` per offset and
``templates_difference``.
"""

from pathlib import Path

from . import geometry
from .assemble import assemble
from .build import write_mapping, write_psf
from .settings import settings
from .tile import build_tile


def make_template(name, entry, out_dir, work_dir):
    """Build one template: PSF, mapping, every tile, then the assembled products.

    Returns
    -------
    dict
        The result of :func:`.assemble.assemble` plus ``tiles`` (tile file paths).
    """
    cfg = settings(entry, f"templates.{name}")
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    psf_path = work_dir / "psf.fits"
    write_psf(cfg["frame"], psf_path, model=cfg["psf"]["model"], k=cfg["supersample"],
              fwhm_arcsec=cfg["psf"]["fwhm_arcsec"], saturation=cfg["psf"]["saturation"])
    mapping = out_dir / "mapping.ecsv"
    write_mapping(cfg["frame"], cfg["references"], psf_path, mapping, tile_px=cfg["tile_px"],
                  offsets=cfg["offsets"], band_weights=cfg["band_weights"],
                  mask_suffix=cfg["mask_suffix"], reference_table=cfg["reference_table"])
    frame = geometry.read_frame(cfg["frame"])
    tiles = []
    for tile in geometry.tile_grid(frame.region, cfg["tile_px"]):
        path = work_dir / "tiles" / f"{tile['name']}.fits"
        build_tile(cfg["frame"], mapping, psf_path, tile["name"], path, k=cfg["supersample"],
                   band_weights=cfg["band_weights"], offsets=cfg["offsets"],
                   ignore_mask_bits=cfg["ignore_mask_bits"], fill=cfg["fill"],
                   min_coverage=cfg["min_coverage"], mask_suffix=cfg["mask_suffix"],
                   reference_table=cfg["reference_table"])
        tiles.append(str(path))
    result = assemble(cfg["frame"], tiles, out_dir, name=name, flux_scale=cfg["flux_scale"],
                      difference=cfg["difference"], refine=cfg["refine_offset"],
                      clip_sigma=cfg["clip_sigma"], background_box=cfg["background_box"])
    result["tiles"] = tiles
    return result
