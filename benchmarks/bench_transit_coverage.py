"""Coverage of the transit fit's intervals on simulated light curves (issue 19).

Each case draws a transit (P 1.5-6 d, stellar density 0.8-2 g/cm^3, Rp/R* 0.07-0.15, b 0-0.9,
limb darkening of a 5000-6500 K star in z with the truth 0.05 off the table per coefficient), an
observing window of 2.5-5 h planned from the predicted T0 and duration (off by ~10 min and ~10 %):
it starts between half a predicted duration after the predicted first contact (a partial transit: no
ingress) and an hour before it (so some windows also miss the egress), 60-s frames
(50-s exposures), a baseline slope, white noise of 1-3 ppt and red noise (Ornstein-Uhlenbeck,
5-30 min, 0-1 of the white level: the real ARCSAT XO-1 b night's fit gives 1.06 (+0.99 -0.40) at
10 min; until Dec 2026 the benchmark drew 0-0.4, ``--red-max 0.4``). The fit gets what an
observer has: the period, a predicted T0 off by ~10 min, a duration guess off by ~10 %, a stellar
density measured to 10 %, the table's limb darkening (prior width 0.1). It reports, for T0 and
rp_rs_sq, the fraction of cases whose truth lies in the 68 % (16-84) and 95 % (2.5-97.5) intervals.

    PYTHONPATH=workflow python benchmarks/bench_transit_coverage.py --cases 200 --jobs 2

``--b-prior 0.1``: the fit also gets a published impact parameter (the truth plus a 0.1 error, as
``b``/``b_err``), as for a known planet.
``--gp-h-range``, ``--gp-tau-range``: the fit's GP prior ranges (``gp_h_range``,
``gp_tau_range_min``), as an instrument's own would be set; ``--gp-h-prior uniform``: the ratio's
prior flat in its range (the fit's default until Dec 2026; now half-Cauchy).

Diagnostics: ``--b 0`` (a fixed true b), ``--only partial`` (only nights seeing part of the transit),
``--oracle gp,b,ld,density`` (the fit given the truth of those nuisances: which one a shortfall
comes from), ``--ld-sigma`` (the fit's limb-darkening prior width), ``--no-red``, ``--noise``, ``--kernel``.
"""

import argparse
import json
import math
import sys
import time
from multiprocessing import Pool

import numpy as np

from bandersnake.sim.lightcurve import simulate_transit_lc
from bandersnake.transitfit.fit import fit_night
from bandersnake.transitfit.limbdark import table_coefficients
from bandersnake.transitfit.model import a_rs_from_density, duration_from_orbit
from bandersnake.transitfit.posterior import GP_H_PRIORS, GP_LOG10_H, Posterior


RED_MAX = 1.0   # the red noise's largest ratio to the white level (see the module's docstring)


def draw_case(seed, b=None, red=True, noise_seed=None, red_max=RED_MAX):
    """Truth, light curve and fit settings of one simulated night (``noise_seed``: another noise
    realisation of the same night, for diagnostics; ``red_max``: the red noise's largest ratio to
    the white level)."""
    rng = np.random.default_rng(seed)
    period = rng.uniform(1.5, 6.0)
    rho = rng.uniform(0.8, 2.0)
    a_rs = a_rs_from_density(rho, period)
    k = rng.uniform(0.07, 0.15)
    b = rng.uniform(0.0, 0.9) if b is None else b
    teff = rng.uniform(5000, 6500)
    u1c, u2c, _ = table_coefficients("z", teff)
    u1, u2 = u1c + 0.05 * rng.standard_normal(), u2c + 0.05 * rng.standard_normal()
    t14 = duration_from_orbit(period, k, b, a_rs)
    t0 = 2460000.0 + rng.uniform(0.3, 0.7)
    # What the observer has: a predicted mid-time (off by ~10 min) and duration (~10 %). The night is
    # planned from these, not from the truth: a window placed on the true t0 would tell where the
    # truth lies (it never starts after the true mid-time), information the fit does not use.
    t0_pred = t0 + rng.normal(0, 10 / 1440)
    t14_pred = t14 * (1 + 0.1 * rng.standard_normal())
    start = t0_pred - t14_pred / 2 - rng.uniform(-0.5 * t14_pred, 1 / 24)
    length = rng.uniform(2.5, 5.0) / 24
    t = np.arange(start, start + length, 60 / 86400)
    sw = rng.uniform(1e-3, 3e-3)
    sr = rng.uniform(0.0, red_max) * sw if red else 0.0
    tau = rng.uniform(5, 30) / 1440
    flux, _ = simulate_transit_lc(t, t0, period, k, a_rs, b, u1, u2, exptime_s=50.0, sigma_white=sw,
                                  sigma_red=sr, tau_red_d=tau, slope=rng.normal(0, 0.01),
                                  rng=rng if noise_seed is None else np.random.default_rng(noise_seed))
    rho_obs = rho * (1 + 0.1 * rng.standard_normal())
    settings = dict(t0=t0_pred, period=period, duration=t14_pred,
                    window=[t0 - 0.1, t0 + 0.1], stellar_density=rho_obs, stellar_density_err=0.1 * rho_obs,
                    baseline_order=1, seed=seed)
    settings["window"] = [settings["t0"] - 1.5 / 24, settings["t0"] + 1.5 / 24]
    truth = dict(t0=t0, rp_rs_sq=k * k, b=b, t14=t14, partial=bool(start > t0 - t14 / 2 or start + length < t0 + t14 / 2),
                 sigma_white=sw, sigma_red=sr, tau_red_d=tau, u1=u1, u2=u2, stellar_density=rho)
    ld = dict(u1=u1c, u2=u2c, sigma=0.1)
    return t, flux, np.full(len(t), sw), settings, ld, truth


ORACLE = ("gp", "b", "ld", "density")


def apply_oracle(oracle, settings, ld, truth):
    """Diagnostic: give the fit the truth of some nuisances, to find which one an interval's shortfall
    comes from. ``gp``: the simulator's red noise (exponential kernel, its ratio and time scale held
    fixed); ``b``: b fixed; ``ld``: limb darkening fixed; ``density``: the density prior centred on
    the true density (10 %: more than the fit would know, so its intervals over-cover)."""
    if "b" in oracle:
        settings["b"] = truth["b"]
    if "ld" in oracle:
        ld = dict(ld, u1=truth["u1"], u2=truth["u2"], sigma=0.0)
    if "density" in oracle:
        settings["stellar_density"] = truth["stellar_density"]
        settings["stellar_density_err"] = 0.1 * truth["stellar_density"]
    if "gp" in oracle:
        settings["gp_kernel"] = "exp"
        ratio = max(truth["sigma_red"] / truth["sigma_white"], 10 ** GP_LOG10_H[0])
        _FixedGP.values = np.array([math.log10(ratio), math.log10(truth["tau_red_d"] * 1440)])
    return settings, ld


class _FixedGP(Posterior):
    """A GP posterior whose ratio and time scale are held at ``values`` (the sampler still carries the
    two coordinates; they only wander within +-1 dex of the values, without effect)."""

    values = None

    def _held(self, x):
        x = np.array(np.atleast_2d(x), float)
        inside = np.all(np.abs(x[:, self.n_shape:] - self.values) < 1, axis=1)
        x[:, self.n_shape:] = self.values
        return x, inside

    def unpack(self, theta):
        return super().unpack(self._held(theta)[0][0])

    def __call__(self, theta):
        x, inside = self._held(theta)
        return super().__call__(x[0]) if inside[0] else -np.inf

    def batch(self, thetas):
        x, inside = self._held(thetas)
        return np.where(inside, super().batch(x), -np.inf)


def _fit_holding_gp(*args, **kwargs):
    """fit_night with the GP posterior of :class:`_FixedGP` (only in this diagnostic's processes)."""
    from bandersnake.transitfit import fit as fit_module

    def make(nights, noise="beta", **kw):
        return (_FixedGP if noise == "gp" else Posterior)(nights, noise=noise, **kw)

    fit_module.Posterior = make
    try:
        return fit_night(*args, **kwargs)
    finally:
        fit_module.Posterior = Posterior


def run_case(seed, b=None, red=True, noise=None, kernel=None, prior_as_population=False, threads=1, oracle=(),
             b_prior=None, ld_sigma=None, red_max=RED_MAX, gp_settings=None):
    t, flux, err, settings, ld, truth = draw_case(seed, b, red, red_max=red_max)
    settings["threads"] = threads
    if b_prior:   # a published b of that 1-sigma: the truth plus its error (so possibly < 0)
        settings["b"] = truth["b"] + b_prior * np.random.default_rng([seed, 1]).standard_normal()
        settings["b_err"] = b_prior
    settings, ld = apply_oracle(oracle, settings, ld, truth)
    if prior_as_population:   # diagnostic: the fit's priors of b and limb darkening = the simulator's spread
        settings["b_max"] = 0.9
        ld["sigma"] = 0.05
    if ld_sigma is not None:
        ld["sigma"] = ld_sigma
    if noise:
        settings["noise"] = noise
    settings.update(gp_settings or {})
    if kernel and "gp" not in oracle:
        settings["gp_kernel"] = kernel
    t1 = time.process_time()
    wall0 = time.time()
    _children_cpu()
    res = (_fit_holding_gp if "gp" in oracle else fit_night)(t, flux, err, settings, exptime_s=50.0, ld=ld)
    cpu = time.process_time() - t1
    cpu += _children_cpu()   # the second ensemble's process (threads 2)
    out = dict(seed=seed, cpu_s=cpu, wall_s=time.time() - wall0, converged=res["chain"]["converged"],
               steps=res["chain"]["n_steps"], n_ensembles=res["chain"].get("n_ensembles", 1),
               rhat_max=max(res["chain"].get("rhat", [1.0])),
               beta=res["noise"]["beta"], noise=res["noise"]["model"], **{f"true_{k}": v for k, v in truth.items()})
    if b_prior:
        out["b_published"] = settings["b"]
    if "gp" in res["noise"]:
        out["gp_h"] = res["noise"]["gp"]["h"]["median"]
        out["gp_tau_min"] = res["noise"]["gp"]["tau_min"]["median"]
    # the contact times (T0 -/+ T14/2) and which of them the night saw
    truth["t1"], truth["t4"] = truth["t0"] - truth["t14"] / 2, truth["t0"] + truth["t14"] / 2
    out["ingress_egress_in_frames_p"] = max(res["contacts"]["ingress_egress_in_frames"].values())  # the fit's judgement
    out["t1_seen"] = bool(t[0] < truth["t1"] < t[-1])
    out["t4_seen"] = bool(t[0] < truth["t4"] < t[-1])
    for name in ("t0", "rp_rs_sq", "t1", "t4", "t14"):
        s = res["t0"] if name == "t0" else res["contacts"][name] if name in ("t1", "t4") else res["parameters"][name]
        v = truth[name]
        out[f"{name}_in68"] = bool(s["p16"] <= v <= s["p84"])
        out[f"{name}_in95"] = bool(s["p2.5"] <= v <= s["p97.5"])
        out[f"{name}_pull"] = (s["median"] - v) / (0.5 * (s["p84"] - s["p16"]))
        out[f"{name}_err"] = 0.5 * (s["p84"] - s["p16"])
    return out


_CHILDREN = [0.0]


def _children_cpu():
    """CPU seconds of ended child processes since the last call."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    now = ru.ru_utime + ru.ru_stime
    out, _CHILDREN[0] = now - _CHILDREN[0], now
    return out


def _rates(rows):
    n = len(rows)
    cells = []
    for name in ("t0", "rp_rs_sq"):
        cells.append(f"{100 * np.mean([r[f'{name}_in68'] for r in rows]):.0f} % / "
                     f"{100 * np.mean([r[f'{name}_in95'] for r in rows]):.0f} %")
    pulls = [np.array([r[f"{name}_pull"] for r in rows]) for name in ("t0", "rp_rs_sq")]
    return (f"| {n} | {cells[0]} | {cells[1]} | {np.std(pulls[0]):.2f} / {np.std(pulls[1]):.2f} "
            f"| {np.mean(pulls[0]):+.2f} |")


def report_contacts(rows):
    """Coverage of the contact times a night saw (a partial transit: the one contact in its window)."""
    rows = [r for r in rows if "t1_seen" in r]
    for label, keep in (("full", lambda r: not r["true_partial"]), ("partial", lambda r: r["true_partial"])):
        hits = [(r[f"{c}_in68"], r[f"{c}_in95"], r[f"{c}_pull"]) for r in rows if keep(r) for c in ("t1", "t4")
                if r[f"{c}_seen"]]
        if hits:
            h = np.array(hits, float)
            print(f"contact times seen, {label} transits: {len(h)}; in 68 % {100 * h[:, 0].mean():.0f} %, in 95 % "
                  f"{100 * h[:, 1].mean():.0f} %, pull mean {h[:, 2].mean():+.2f} std {h[:, 2].std():.2f}")


def report_split(rows):
    """The BENCHMARKS.md table: all cases and subsets (transit seen whole or not, b, red noise)."""
    print("| sample | cases | T0 in 68 % / 95 % | rp_rs_sq in 68 % / 95 % | pull std T0 / rp_rs_sq | mean T0 pull |")
    print("|---|---|---|---|---|---|")
    subsets = [("all", lambda r: True),
               ("red noise < 0.1 of the white level", lambda r: r["true_sigma_red"] < 0.1 * r["true_sigma_white"]),
               ("red noise 0.1-0.4 of the white level",
                lambda r: 0.1 * r["true_sigma_white"] <= r["true_sigma_red"] < 0.4 * r["true_sigma_white"]),
               ("red noise >= 0.4 of the white level", lambda r: r["true_sigma_red"] >= 0.4 * r["true_sigma_white"]),
               ("full transits", lambda r: not r["true_partial"]),
               ("partial transits", lambda r: r["true_partial"]),
               ("no contact in the frames (truth)", lambda r: "t1_seen" in r and not (r["t1_seen"] or r["t4_seen"])),
               ("the fit warned: no ingress or egress in the frames", lambda r: r.get("ingress_egress_in_frames_p", 1.0) < 0.5),
               ("b < 0.2", lambda r: r["true_b"] < 0.2),
               ("b < 0.2, full", lambda r: r["true_b"] < 0.2 and not r["true_partial"]),
               ("b < 0.2, partial", lambda r: r["true_b"] < 0.2 and r["true_partial"]),
               ("b 0.2-0.75", lambda r: 0.2 <= r["true_b"] <= 0.75),
               ("b > 0.75", lambda r: r["true_b"] > 0.75)]
    for label, keep in subsets:
        sub = [r for r in rows if keep(r)]
        if sub:
            print(f"| {label} " + _rates(sub))


def report(rows):
    n = len(rows)
    print(f"cases: {n} ({sum(r['true_partial'] for r in rows)} partial transits, "
          f"{sum(r['true_sigma_red'] > 0 for r in rows)} with red noise); "
          f"chains converged: {sum(r['converged'] for r in rows)}/{n}")
    cpu = np.array([r["cpu_s"] for r in rows])
    print(f"CPU per fit: median {np.median(cpu):.1f} s, 90th percentile {np.percentile(cpu, 90):.1f} s; "
          f"median beta {np.median([r['beta'] for r in rows]):.2f}")
    for name in ("t0", "rp_rs_sq"):
        for level, target, tol in ((68, 0.68, 0.05), (95, 0.95, 0.03)):
            frac = np.mean([r[f"{name}_in{level}"] for r in rows])
            se = math.sqrt(target * (1 - target) / n)
            ok = "PASS" if round(abs(frac - target), 9) <= tol else "FAIL"   # the band is inclusive
            print(f"{name:9s} truth in {level} % interval: {100 * frac:5.1f} % (target {100 * target:.0f} +- "
                  f"{100 * tol:.0f}; binomial s.e. {100 * se:.1f}) {ok}")
        pulls = np.array([r[f"{name}_pull"] for r in rows])
        print(f"{name:9s} pulls: mean {np.mean(pulls):+.2f}, std {np.std(pulls):.2f}")
    if all("t14_pull" in r for r in rows):
        pulls = np.array([r["t14_pull"] for r in rows])
        print(f"t14       pulls: mean {np.mean(pulls):+.2f}, std {np.std(pulls):.2f}")
    if any("wall_s" in r for r in rows):
        wall = np.array([r.get("wall_s", np.nan) for r in rows])
        print(f"wall per fit: median {np.nanmedian(wall):.1f} s; ensembles per fit: "
              f"{sorted({r.get('n_ensembles', 1) for r in rows})}; steps median {np.median([r['steps'] for r in rows]):.0f}; "
              f"largest R-hat {max(r.get('rhat_max', 1.0) for r in rows):.3f}")
    report_split(rows)
    report_contacts(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--b", type=float, default=None, help="fix the true impact parameter (e.g. 0)")
    ap.add_argument("--noise", default=None, help="noise model (gp, beta, white); default the fit's")
    ap.add_argument("--kernel", default=None, help="GP kernel (matern32, exp); default the fit's")
    ap.add_argument("--no-red", action="store_true", help="white noise only")
    ap.add_argument("--red-max", type=float, default=RED_MAX,
                    help=f"the red noise's largest ratio to the white level (default {RED_MAX}; 0.4 before Dec 2026)")
    ap.add_argument("--prior-as-population", action="store_true",
                    help="diagnostic: fit with b < 0.9 and limb-darkening priors of width 0.05, the simulator's spread")
    ap.add_argument("--only", choices=("full", "partial"), default=None,
                    help="only the seeds (from --first-seed on) whose window sees the whole transit / part of it")
    ap.add_argument("--oracle", default="", help="diagnostic: comma-separated nuisances given their truth: " + ", ".join(ORACLE)
                    + " (see apply_oracle)")
    ap.add_argument("--b-prior", type=float, default=None, metavar="SIGMA",
                    help="the fit gets a published b of this 1-sigma (b and b_err: a Gaussian prior)")
    ap.add_argument("--ld-sigma", type=float, default=None,
                    help="diagnostic: the width of the fit's limb-darkening prior (default the fit's, 0.1)")
    ap.add_argument("--gp-h-range", type=float, nargs=2, metavar=("LO", "HI"),
                    help="the fit's prior range of the GP's red-to-white ratio (an instrument's own; default the fit's)")
    ap.add_argument("--gp-tau-range", type=float, nargs=2, metavar=("LO", "HI"),
                    help="the fit's prior range (min) of the GP's time scale (default the fit's)")
    ap.add_argument("--gp-h-prior", choices=GP_H_PRIORS, default=None,
                    help="the shape of the fit's prior of the GP's ratio (default the fit's, half_cauchy)")
    ap.add_argument("--threads", type=int, default=2,
                    help="processes per fit (2: two MCMC ensembles, as the workflow's rule runs it)")
    ap.add_argument("--json", default=None, help="write the per-case rows here (one JSON object per line, as they end)")
    ap.add_argument("--report", default=None, help="only summarise the rows of an earlier --json file")
    args = ap.parse_args(argv)
    gp_settings = {k: v for k, v in (("gp_h_range", args.gp_h_range), ("gp_tau_range_min", args.gp_tau_range),
                                   ("gp_h_prior", args.gp_h_prior)) if v}
    if args.report:
        with open(args.report) as fh:
            report([json.loads(line) for line in fh if line.strip()])
        return 0
    oracle = tuple(o for o in args.oracle.split(",") if o)
    unknown = set(oracle) - set(ORACLE)
    if unknown:
        ap.error(f"--oracle: unknown {sorted(unknown)}; choose from {ORACLE}")
    seeds = range(args.first_seed, args.first_seed + args.cases)
    if args.only:   # the window is drawn before any noise: cheap to sort the seeds without fitting
        want_partial = args.only == "partial"
        seeds, seed = [], args.first_seed
        while len(seeds) < args.cases:
            if draw_case(seed, args.b, not args.no_red, red_max=args.red_max)[5]["partial"] == want_partial:
                seeds.append(seed)
            seed += 1
    t1 = time.time()
    rows = []
    out = open(args.json, "a") if args.json else None
    with Pool(args.jobs) as pool:
        for row in pool.imap_unordered(_run, [(s, args.b, not args.no_red, args.noise, args.kernel, args.prior_as_population, args.threads, oracle,
                                          args.b_prior, args.ld_sigma, args.red_max, gp_settings)
                                         for s in seeds]):
            rows.append(row)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
    print(f"wall time {time.time() - t1:.0f} s with {args.jobs} processes")
    report(rows)
    return 0


def _run(args):
    return run_case(*args)


if __name__ == "__main__":
    sys.exit(main())
