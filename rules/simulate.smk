rule simulate_demo:
    """The built-in demo night (raw frames + truth) made by bandersnake's simulator."""
    output:
        raw=directory("demo/raw/SPIRIT2/images/20251215"),
        truth=directory("demo/truth/SPIRIT2_20251215"),
    log:
        "demo/logs/simulate_demo.log",
    conda:
        "../envs/bandersnake.yaml"
    params:
        instrument=lambda w: instrument_cfg("SPIRIT2_20251215"),
        overrides=config["simulate"],
    script:
        "../workflow/scripts/simulate_demo.py"
