checkpoint inventory:
    """Read every raw header of a night once: types, targets, filters, times, sessions, rejects."""
    output:
        table=work("{night}/calib/inventory.ecsv"),
        lists=directory(work("{night}/calib/lists")),
    log:
        logs("{night}/logs/inventory.log"),
    conda:
        "../envs/bandersnake.yaml"
    # Alone at the start of a night: its file reads use every core.
    threads: config["processing"]["threads"]
    params:
        frames=lambda w: DigestedList(raw_frames(w.night), label="raw files"),
        fingerprint=raw_frames_fingerprint,
        instrument=lambda w: instrument_cfg(w.night),
        run=lambda w: night_cfg(w.night)["instrument_settings"]["run"],
        discard=lambda w: night_cfg(w.night)["instrument_settings"][
            "discard_n_first_science"
        ],
    script:
        "../workflow/scripts/inventory.py"
