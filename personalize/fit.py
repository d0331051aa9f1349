"""``personalize fit``: one entry that wires the scans to an inference engine and writes what every fit writes.

    scans (NIfTI) ──► personalize.io ──► working grid (coarse, cropped) ──► Prior × image likelihood
        ──► engine (TMCMC) ──► Posterior ──► MAP and posterior-predictive densities on the input grid

The folder a fit writes (ARCHITECTURE.md § What every run writes):

- ``summary.json``: method, simulator, number of simulations, wall time, log-evidence, and per parameter
  (with the derived μ₁ = √(D_w·T) in mm and μ₂ = √(ρ·T)) its MAP, mean, 5 % and 95 % quantiles and unit;
  the seed ``x, y, z`` in mm of the input images' world space; the Dice of the MAP density thresholded at
  its own u_t1gd and u_flair against the observed masks; the grids and settings used.
- ``posterior.nc``: arviz InferenceData of the samples (and μ₁, μ₂), TMCMC's stages in its attrs.
- ``map_density.nii.gz``, ``mean_density.nii.gz``, ``p_u_above_<c>.nii.gz``: on the input grid, with the
  input affine (written as the T1Gd file's own orientation).
- ``figures/``: ``pair.png``, ``map_slices.png`` (observed masks over the MAP density),
  ``predictive.png`` (P(u > lowest c)), ``tempering.png``.
- ``checkpoint/``: one file per TMCMC stage and ``fit.json`` (the fingerprint of inputs and settings);
  ``resume=True`` continues a killed fit from its last stage to the same result, and refuses a
  checkpoint written for other inputs or settings.

TMCMC samples (log D_w, log ρ, log T) instead of (D_w, ρ, T) (:mod:`personalize.reparameterize`): the
growth depends on those three only through D_w·T and ρ·T, a ridge that is straight in logs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from likelihoods.imaging import MASK_MODELS
from likelihoods.joint import JointLikelihood
from personalize.embedding import EMBEDDINGS, EmbeddedSimulator, embedding_net, network_input
from personalize.executors import evaluate, local_executor
from personalize.io import Observation, write_output
from personalize.npe import NPESettings, sequential_npe
from personalize.overlap import dice
from personalize.posterior import Posterior
from personalize.predictive import DEFAULT_THRESHOLDS, check_thresholds, posterior_predictive
from personalize.priors import DEFAULT_SEED_MARGIN_MM, Prior
from personalize.reparameterize import FunctionInCoordinates, LogCoordinates, PriorInCoordinates, in_physical_units
from personalize.report import plot_orthogonal_slices, plot_pairs, plot_tempering
from personalize.scan_simulator import ScanSimulator, observed_scans
from personalize.tmcmc import tmcmc
from personalize.working_grid import (
    DEFAULT_MARGIN_MM,
    DEFAULT_SPACING_MM,
    ImageLogLikelihood,
    WorkingProblem,
    build_working_problem,
    crop_wall_density,
    flair_abnormality,
)
from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import FisherKolmogorov
from simulators.protocol import Simulator

ENGINES = ("tmcmc", "npe")
"""The methods :func:`fit` runs: posteriors from simulations on the patient's own grid."""
METHODS = (*ENGINES, "lmi")
"""Every ``personalize fit --method``: the engines, and Learn-Morph-Infer's point estimate through the atlas
(:func:`personalize.lmi.personalization.fit_lmi`)."""
SIMULATORS = ("fisher-kolmogorov", "surrogate")
"""The growth models a fit simulates with: the numerical solver, or its geometry-aware neural surrogate
(:mod:`simulators.surrogates.geometry_aware`) with trained weights."""
LOG_SCALED = ("D_w", "rho", "T")
DERIVED_UNITS = {"mu_1": "mm", "mu_2": "1"}


@dataclass(frozen=True)
class FitSettings:
    """How a fit runs. Defaults are what ``benchmarks/fit_synthetic.py`` measured to cover the truth on
    the built-in case within the time goal (see ``docs/fit.md``).

    Attributes:
        method: the inference engine, ``"tmcmc"`` or ``"npe"`` (:mod:`personalize.npe`).
        convention: likelihood form, ``"thesis"`` or ``"gliomasolver"`` (see :mod:`likelihoods.joint`).
        spacing_mm: working grid spacing (axes finer than this are coarsened).
        margin_mm: crop margin around the abnormality.
        seed_margin_mm: the seed's prior: tissue within this distance of the abnormality.
        coarse_levels: cheaper levels of multilevel TMCMC below the working grid, each twice as coarse
            (0: temper on the working grid alone).
        switch_exponent: the tempering exponent at which each coarse level is bridged to the next finer one
            (:func:`personalize.tmcmc.tmcmc`'s ``switch_exponents``).
        n_samples: TMCMC population size.
        chain_steps: Metropolis steps per chain and stage.
        target_cov: TMCMC's coefficient of variation of the weights per stage.
        max_stages: TMCMC gives up (resumably) after this many stages.
        n_predictive: posterior draws simulated for the mean and exceedance maps.
        thresholds: exceedance levels c of the ``p_u_above_<c>`` maps.
        seed: seeds every random draw (TMCMC, predictive draws).
        workers: local processes evaluating each population (1: in this process, threads in the kernel).
        chunk_size: parameter sets simulated per batch.
        device: torch device of the simulations.
        estimator: NPE's estimator (:data:`personalize.npe.ESTIMATORS`).
        rounds: NPE's simulation rounds.
        simulations: NPE's simulations per round.
        npe_draws: samples drawn from NPE's final estimate.
        npe_max_epochs: cap on NPE's training epochs per round (None: sbi's early stopping alone).
        embedding: how NPE sees the scans (:data:`personalize.embedding.EMBEDDINGS`).
        scan_masks: how NPE's simulated masks are made (:mod:`likelihoods.imaging`).
        pool: NPE's scans are averaged over ``pool³`` working voxels before the embedding.
        simulator: the growth model, one of :data:`SIMULATORS`.
        surrogate_weights: the surrogate's weights file (None: the weights shipped in the package,
            :data:`personalize.surrogate.weights.SHIPPED_SURROGATE`).
    """

    method: str = "tmcmc"
    convention: str = "thesis"
    spacing_mm: float = DEFAULT_SPACING_MM
    margin_mm: float = DEFAULT_MARGIN_MM
    seed_margin_mm: float = DEFAULT_SEED_MARGIN_MM
    coarse_levels: int = 1
    switch_exponent: float = 0.002
    n_samples: int = 384
    chain_steps: int = 2
    target_cov: float = 1.0
    max_stages: int = 100
    n_predictive: int = 128
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    seed: int = 0
    workers: int = 1
    chunk_size: int = 64
    device: str = "cpu"
    estimator: str = "mdn"
    rounds: int = 4
    simulations: int = 1000
    npe_draws: int = 4000
    npe_max_epochs: int | None = None
    embedding: str = "moments"
    scan_masks: str = "threshold"
    pool: int = 1
    simulator: str = "fisher-kolmogorov"
    surrogate_weights: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ENGINES:
            raise ValueError(f"unknown method {self.method!r}; available: {', '.join(ENGINES)} (lmi runs through "
                             "personalize.lmi.personalization.fit_lmi)")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {self.embedding!r}; available: {', '.join(EMBEDDINGS)}")
        if self.scan_masks not in MASK_MODELS:
            raise ValueError(f"unknown scan_masks {self.scan_masks!r}; available: {', '.join(MASK_MODELS)}")
        self.npe_settings()  # checks estimator, rounds, simulations, npe_draws
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        for name in ("n_samples", "chain_steps", "max_stages", "n_predictive", "workers", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.coarse_levels < 0:
            raise ValueError(f"coarse_levels must be >= 0, got {self.coarse_levels}")
        if not 0 < self.switch_exponent <= 1:
            raise ValueError(f"switch_exponent must lie in (0, 1], got {self.switch_exponent}")
        if self.n_samples < 2:
            raise ValueError("n_samples must be >= 2")
        if not self.target_cov > 0:
            raise ValueError(f"target_cov must be > 0, got {self.target_cov}")
        if self.pool < 1:
            raise ValueError(f"pool must be >= 1, got {self.pool}")
        if self.simulator not in SIMULATORS:
            raise ValueError(f"unknown simulator {self.simulator!r}; available: {', '.join(SIMULATORS)}")
        if self.surrogate_weights is not None and self.simulator != "surrogate":
            raise ValueError("surrogate_weights applies to simulator 'surrogate' only")

    def npe_settings(self) -> NPESettings:
        """The sequential-NPE settings these fit settings imply."""
        return NPESettings(estimator=self.estimator, rounds=self.rounds, simulations=self.simulations,
                           n_posterior=self.npe_draws, max_epochs=self.npe_max_epochs, seed=self.seed,
                           device=self.device)


@dataclass(frozen=True)
class FitResult:
    """What a fit returns: the posterior in physical units (with μ₁, μ₂), the summary written to
    ``summary.json`` and the paths of every file written."""

    posterior: Posterior
    summary: dict[str, object]
    files: dict[str, Path] = field(default_factory=dict)


def growth_simulator(settings: FitSettings) -> tuple[Simulator, dict[str, object]]:
    """The growth model ``settings`` name, and what ``summary.json`` records of it (its name; for the surrogate,
    its weights file and their SHA-256).

    Raises:
        ValueError: surrogate weights that are missing, changed since they were saved, or of another format.
    """
    if settings.simulator == "fisher-kolmogorov":
        solver = FisherKolmogorov()
        return solver, simulator_record(solver)
    from personalize.surrogate.weights import SHIPPED_SURROGATE, load_surrogate

    path = Path(settings.surrogate_weights or SHIPPED_SURROGATE)
    if settings.surrogate_weights is None and not path.is_file():
        raise ValueError("this installation ships no surrogate weights; train them (python -m "
                         "personalize.surrogate.dataset, then python -m personalize.surrogate.train) and pass "
                         "--surrogate-weights FILE.pt")
    surrogate, record = load_surrogate(path, device=settings.device, batch_size=settings.chunk_size)
    return surrogate, {"name": "geometry_aware_surrogate", "weights": str(path.resolve()), "sha256": record["sha256"]}


def simulator_record(simulator: Simulator) -> dict[str, object]:
    """What ``summary.json`` records of a simulator given as an object: its name, ``fisher_kolmogorov`` for this
    project's solver (as ``--simulator fisher-kolmogorov`` records it), else its class's name."""
    return {"name": "fisher_kolmogorov" if isinstance(simulator, FisherKolmogorov) else type(simulator).__name__}


def with_growth_scales(posterior: Posterior) -> Posterior:
    """The posterior with the derived columns μ₁ = √(D_w·T) (mm) and μ₂ = √(ρ·T) appended."""
    index = {name: i for i, name in enumerate(posterior.parameter_names)}
    s = posterior.samples
    mu = np.stack([np.sqrt(s[:, index["D_w"]] * s[:, index["T"]]), np.sqrt(s[:, index["rho"]] * s[:, index["T"]])],
                  axis=1)
    return replace(posterior, parameter_names=(*posterior.parameter_names, "mu_1", "mu_2"),
                   samples=np.concatenate([s, mu], axis=1), units={**posterior.units, **DERIVED_UNITS})


def fingerprint(problem: WorkingProblem, prior: Prior, settings: FitSettings,
                simulator: Mapping[str, object] | None = None) -> str:
    """SHA-256 over the working scans and anatomy, the prior's bounds and seed set, the settings that change
    samples (not ``workers``, ``chunk_size``, ``device``, ``max_stages`` or the predictive ones), and what
    describes the simulator (its weights' SHA-256 for a surrogate: :func:`growth_simulator`)."""
    digest = hashlib.sha256()
    arrays = [problem.anatomy.wm, problem.anatomy.gm, problem.anatomy.affine, prior.candidates]
    arrays += [t.cpu().numpy() for t in (problem.scans.t1gd, problem.scans.flair, problem.scans.pet) if t is not None]
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    sampling = {k: v for k, v in asdict(settings).items()
                if k not in ("workers", "chunk_size", "device", "n_predictive", "thresholds", "max_stages")}
    digest.update(json.dumps([sampling, prior.bounds, dict(simulator or {})], sort_keys=True).encode())
    return digest.hexdigest()


def prepare_checkpoint(directory: Path, digest: str, resume: bool) -> None:
    """Make ``directory`` hold this fit's checkpoints: on resume, check ``fit.json`` names the same fit;
    otherwise clear stages a previous fit left there."""
    record = directory / "fit.json"
    if resume and record.exists():
        written = json.loads(record.read_text()).get("fingerprint")
        if written != digest:
            raise ValueError(f"{directory} holds a checkpoint of another fit (other scans, prior or settings); "
                             "resume with the same inputs, or start anew without --resume")
        return
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    record.write_text(json.dumps({"fingerprint": digest}) + "\n")


def fit(
    observation: Observation,
    out: str | os.PathLike[str],
    *,
    tissue: Anatomy | None = None,
    settings: FitSettings = FitSettings(),
    simulator: Simulator | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    bounds_toml: str | os.PathLike[str] | None = None,
    seed_within: Mapping[str, tuple[float, float]] | None = None,
    resume: bool = False,
    progress: bool = True,
    truth: Mapping[str, float] | None = None,
    record: Mapping[str, object] | None = None,
) -> FitResult:
    """Personalize the growth model to ``observation`` and write the fit's folder ``out``.

    Args:
        observation: the scans (:func:`personalize.io.load_observation`).
        out: output folder (created); ``out/checkpoint`` is written as the engine runs.
        tissue: the patient's tissue maps on the scans' grid, or None for the default atlas (scans in
            MNI152 space).
        settings: engine, grid and output settings.
        simulator: the growth model (default: the one ``settings.simulator`` names, :func:`growth_simulator`).
        bounds, bounds_toml: prior bound overrides (:meth:`personalize.priors.Prior.from_config`).
        seed_within: a world box (mm, the input images' world space) the seed's candidate voxels are cut to
            (:meth:`personalize.priors.Prior.from_config`), or None for every candidate.
        resume: continue from ``out/checkpoint``.
        progress: progress bars.
        truth: known parameter values (a synthetic case), marked in the pair plot.
        record: further entries of ``summary.json`` (what the fit was started from), JSON-serializable.

    Raises:
        ValueError: bad settings or bounds, tissue on another grid, no candidate seed voxel, or a
            checkpoint of another fit under ``resume``.
    """
    started = time.perf_counter()
    out = Path(out)
    if simulator is None:
        simulator, described = growth_simulator(settings)
    else:
        described = simulator_record(simulator)
    problem = build_working_problem(observation, tissue, spacing_mm=settings.spacing_mm,
                                    margin_mm=settings.margin_mm)
    prior = Prior.from_config(problem.anatomy, problem.scans, bounds, bounds_toml, settings.seed_margin_mm,
                              seed_within=seed_within)
    joint = JointLikelihood(convention=settings.convention)
    likelihood = ImageLogLikelihood(simulator, problem.anatomy, problem.scans, joint, prior.names, settings.device)
    checkpoint = out / "checkpoint"
    prepare_checkpoint(checkpoint, fingerprint(problem, prior, settings, described), resume)
    engine = tmcmc_posterior if settings.method == "tmcmc" else npe_posterior
    posterior = engine(problem, prior, likelihood, settings, checkpoint=checkpoint, resume=resume, progress=progress)
    return write_fit(problem, prior, posterior, likelihood, settings, out, started=started, progress=progress,
                     truth=truth, record={"simulator": described["name"], "simulator_record": described,
                                          **(record or {})})


def tmcmc_posterior(
    problem: WorkingProblem,
    prior: Prior,
    likelihood: ImageLogLikelihood,
    settings: FitSettings,
    *,
    checkpoint: Path,
    resume: bool,
    progress: bool,
) -> Posterior:
    """Multilevel TMCMC in log coordinates (:func:`personalize.tmcmc.tmcmc`), back in physical units."""
    coarse = []
    for level in range(settings.coarse_levels, 0, -1):  # coarsest first
        cheap = problem.coarsened(2**level)
        coarse.append(ImageLogLikelihood(likelihood.simulator, cheap.anatomy, cheap.scans, likelihood.likelihood,
                                         prior.names, settings.device,
                                         weight=cheap.voxel_volume_mm3 / problem.voxel_volume_mm3))
    coordinates = LogCoordinates.of(prior.names, LOG_SCALED)
    executor = local_executor(settings.workers)
    try:
        sampled = tmcmc(
            FunctionInCoordinates(likelihood, coordinates),
            PriorInCoordinates(prior, coordinates),
            n_samples=settings.n_samples,
            seed=settings.seed,
            parameter_names=prior.names,
            target_cov=settings.target_cov,
            chain_steps=settings.chain_steps,
            executor=executor,
            chunk_size=settings.chunk_size,
            checkpoint_dir=checkpoint,
            resume=resume,
            progress=progress,
            max_stages=settings.max_stages,
            units=prior.units,
            coarse_log_likelihoods=[FunctionInCoordinates(level, coordinates) for level in coarse],
            switch_exponents=[settings.switch_exponent] * len(coarse),
        )
    finally:
        if executor is not None:
            executor.shutdown()
    return in_physical_units(sampled, coordinates)


def npe_posterior(
    problem: WorkingProblem,
    prior: Prior,
    likelihood: ImageLogLikelihood,
    settings: FitSettings,
    *,
    checkpoint: Path,
    resume: bool,
    progress: bool,
) -> Posterior:
    """Sequential NPE (:func:`personalize.npe.sequential_npe`) in log coordinates on simulated scans
    (:class:`personalize.scan_simulator.ScanSimulator`), its samples and estimated densities in physical units."""
    coordinates = LogCoordinates.of(prior.names, LOG_SCALED)
    scans = ScanSimulator(likelihood, masks=settings.scan_masks, pool=settings.pool, seed=settings.seed)
    x_o = observed_scans(problem.scans, settings.pool)
    simulate = FunctionInCoordinates(EmbeddedSimulator(scans, settings.embedding), coordinates)
    executor = local_executor(settings.workers)

    def simulate_all(z: torch.Tensor) -> torch.Tensor:
        return evaluate(simulate, z.double(), executor=executor, chunk_size=settings.chunk_size,
                        progress="NPE simulations" if progress else None).float()

    try:
        result = sequential_npe(PriorInCoordinates(prior, coordinates), simulate_all,
                                network_input(settings.embedding, x_o[None])[0], settings.npe_settings(),
                                embedding=embedding_net(settings.embedding, x_o.shape[0], seed=settings.seed),
                                z_score_x="none" if settings.embedding == "cnn" else "independent",
                                checkpoint_dir=checkpoint, resume=resume, progress=progress)
    finally:
        if executor is not None:
            executor.shutdown()
    sampled = Posterior(
        parameter_names=prior.names, samples=result.samples.double().numpy(),
        log_weights=np.zeros(len(result.samples)), log_evidence=None, n_simulations=result.n_simulations,
        wall_s=result.wall_s, method=f"npe-{settings.estimator}", units=prior.units,
        log_density=result.log_prob.double().numpy(), stages=tuple(asdict(r) for r in result.rounds))
    return in_physical_units(sampled, coordinates)


def write_fit(
    problem: WorkingProblem,
    prior: Prior,
    posterior: Posterior,
    likelihood: ImageLogLikelihood,
    settings: FitSettings,
    out: Path,
    *,
    started: float,
    progress: bool,
    truth: Mapping[str, float] | None,
    record: Mapping[str, object] | None = None,
) -> FitResult:
    """Simulate the MAP and the posterior predictive, and write every output of the fit into ``out``, with
    ``record``'s entries added to ``summary.json``."""
    best = posterior.samples[posterior.map_index()]
    map_working = likelihood.density(torch.from_numpy(best[None]))[0].cpu().numpy()
    draws = posterior.resample(settings.n_predictive, seed=settings.seed).samples
    maps = posterior_predictive(likelihood.density, draws, thresholds=settings.thresholds,
                                chunk_size=settings.chunk_size, progress=progress)
    observation = problem.observation
    map_density = problem.to_input_grid(map_working)
    index = {name: i for i, name in enumerate(posterior.parameter_names)}

    files: dict[str, Path] = {}
    files["map_density"] = write_output(map_density, observation, out / "map_density.nii.gz")
    files["mean_density"] = write_output(problem.to_input_grid(maps.mean), observation, out / "mean_density.nii.gz")
    for level, probability in maps.exceedance.items():
        name = f"p_u_above_{level:g}"
        files[name] = write_output(problem.to_input_grid(probability), observation, out / f"{name}.nii.gz")

    full = with_growth_scales(posterior)
    wall_s = time.perf_counter() - started
    full = replace(full, wall_s=wall_s)
    files["posterior"] = out / "posterior.nc"
    temporary = out / ".posterior.nc.tmp"
    full.to_inference_data().to_netcdf(str(temporary))
    os.replace(temporary, files["posterior"])

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    outlines = {"T1Gd": observation.t1gd > 0, "FLAIR": flair_abnormality(observation) > 0}
    title = ", ".join(f"{n}={best[index[n]]:.3g}" for n in ("D_w", "rho", "T", "u_t1gd", "u_flair"))
    files["map_slices"] = plot_orthogonal_slices(
        map_density, problem.input_anatomy, figures / "map_slices.png", title=f"MAP: {title}", outlines=outlines,
        thresholds=(float(best[index["u_flair"]]), float(best[index["u_t1gd"]])))
    lowest = min(maps.exceedance)
    files["predictive"] = plot_orthogonal_slices(
        problem.to_input_grid(maps.exceedance[lowest]), problem.input_anatomy, figures / "predictive.png",
        title=f"P(u > {lowest:g}) over {maps.n_draws} posterior draws", outlines=outlines, thresholds=(0.5, 0.9))
    shown = ("mu_1", "mu_2", *(n for n in posterior.parameter_names if n not in LOG_SCALED))
    columns = [full.parameter_names.index(n) for n in shown]
    truth_shown = None
    if truth:
        truth_shown = dict(truth)
        if {"D_w", "rho", "T"} <= set(truth):
            truth_shown |= {"mu_1": math.sqrt(truth["D_w"] * truth["T"]), "mu_2": math.sqrt(truth["rho"] * truth["T"])}
    files["pair"] = plot_pairs(full.samples[:, columns], shown, figures / "pair.png", units=full.units,
                               truth=truth_shown, best=full.samples[full.map_index(), columns])
    if posterior.method == "tmcmc":
        files["tempering"] = plot_tempering(posterior.stages, figures / "tempering.png")

    summary: dict[str, object] = {
        "method": posterior.method,
        "n_simulations": int(posterior.n_simulations + 1 + settings.n_predictive),
        "n_simulations_inference": int(posterior.n_simulations),
        "wall_s": wall_s,
        "wall_s_inference": posterior.wall_s,
        "log_evidence": posterior.log_evidence,
        "parameters": full.summary(),
        "map_fit": {
            "dice_t1gd": dice(map_density > best[index["u_t1gd"]], observation.t1gd > 0),
            "dice_flair": dice(map_density > best[index["u_flair"]], flair_abnormality(observation) > 0),
            "density_at_crop_wall": crop_wall_density(map_working),
        },
        **({"stages": len(posterior.stages) - 1} if posterior.method == "tmcmc" else {"rounds": list(posterior.stages)}),
        "grid": problem.describe(),
        "prior": {"bounds": {n: list(b) for n, b in prior.bounds.items()},
                  "seed_box_mm": {n: list(b) for n, b in prior.seed_box.items()},
                  "seed_margin_mm": prior.seed_margin_mm},
        "settings": {**asdict(settings), "thresholds": list(settings.thresholds)},
        "world_space": "x, y, z are mm in the world (scanner) coordinates of the input images' affine",
        "files": {name: str(path) for name, path in files.items()},
        **(record or {}),
    }
    files["summary"] = out / "summary.json"
    temporary = out / ".summary.json.tmp"
    temporary.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(temporary, files["summary"])
    return FitResult(posterior=full, summary=summary, files=files)


def truth_from_json(path: str | os.PathLike[str]) -> dict[str, float]:
    """``{name: value}`` from a ``truth.json`` written by ``personalize synth``."""
    return {name: float(entry["value"]) for name, entry in json.loads(Path(path).read_text()).items()}


def summary_table(summary: Mapping[str, object], names: Sequence[str] | None = None) -> str:
    """The summary's parameters as a fixed-width text table (MAP, mean, 90 % interval, unit); a value a method
    does not give (null: the spread of a point estimate) shows as ``-``."""
    parameters = summary["parameters"]
    assert isinstance(parameters, dict)
    rows = [f"{'parameter':<12}{'MAP':>12}{'mean':>12}{'q05':>12}{'q95':>12}  unit"]
    for name in names or parameters:
        p = parameters[name]
        values = "".join(f"{'-':>12}" if p[key] is None else f"{p[key]:>12.4g}"
                         for key in ("map", "mean", "q05", "q95"))
        rows.append(f"{name:<12}{values}  {p['unit']}")
    return "\n".join(rows)
