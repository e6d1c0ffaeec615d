rule night_summary:
    """One readable summary of the night: frames, calibrations and their fallbacks, targets."""
    input:
        night_products,
    output:
        work("{night}/night_summary.txt"),
    log:
        logs("{night}/logs/night_summary.log"),
    conda:
        "../envs/bandersnake.yaml"
    params:
        night="{night}",
        without_positions=lambda w: sorted(
            set(science_targets(w.night)) - set(photometry_targets(w.night))
        ),
    script:
        "../workflow/scripts/night_summary.py"


rule publish_night:
    """Publish the night's products and logs into results/<night>/ as hard links."""
    input:
        products=night_products,
        summary=work("{night}/night_summary.txt"),
    output:
        directory(f"{RESULTS}/{{night}}"),
    log:
        logs("{night}/logs/publish.log"),
    conda:
        "../envs/bandersnake.yaml"
    params:
        work_night=lambda w: work(w.night),
    script:
        "../workflow/scripts/publish.py"
