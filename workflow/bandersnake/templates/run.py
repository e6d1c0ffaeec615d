"""All steps of one template in one process (tests, benchmarks, a quick look without Snakemake).

The workflow runs the same functions as separate jobs: ``templates_psf`` -> ``templates_mapping``
-> one ``templates_tile`` per tile -> ``templates_assemble``.
"""

import copy
from pathlib import Path

from ..config import validate
from ..errors import ConfigError

from . import geometry
from .assemble import assemble
from .build import write_mapping, write_psf
from .offsets import offset_tag
from .tile import build_tile

def settings(entry, source="config: templates"):
    """One template's settings, validated against templates.schema.yaml with its defaults filled in.

    Raises
    ------
    ConfigError
        Naming ``source`` and the key.
    """
    cfg = validate(copy.deepcopy(dict(entry)), "templates.schema.yaml", source)
    cfg["psf"] = {"model": "gaussian", "fwhm_arcsec": None, "saturation": None, **cfg.get("psf", {})}
    cfg["offsets"] = [tuple(map(float, o)) for o in cfg["offsets"]]
    tags = [offset_tag(*o) for o in cfg["offsets"]]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"{source}: offsets must differ at two decimals (they name the files): {tags}")
    if cfg["psf"]["model"] == "gaussian" and not cfg["psf"]["fwhm_arcsec"]:
        raise ConfigError(f"{source}: psf: model gaussian needs fwhm_arcsec")
    return cfg


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
                      clip_sigma=cfg["clip_sigma"])
    result["tiles"] = tiles
    return result
