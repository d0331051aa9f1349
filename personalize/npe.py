"""Sequential neural posterior estimation through ``sbi``: the likelihood is learned from simulations.

Round 1 draws θ from the prior; each later round draws it from the current estimate of p(θ | x_o) at the
patient's observation x_o, simulates, and trains on (sbi keeps every simulation; with an MDN and a Gaussian
or box-uniform prior, sbi's closed-form APT loss trains each later round on its own simulations only,
continuing from the previous network, unless ``atomic_loss`` keeps the atomic loss). The estimators (``estimator``):

- ``"mdn"``: a mixture density network (Bishop 1994), trained with sbi's APT / SNPE-C loss (Greenberg et al.,
  ICML 2019), the sequential MDN of Ezhov et al. (2022) for glioma personalization.
  Both density estimators (``"mdn"``, ``"nsf"``) learn θ mapped to an unbounded space by ``biject_to(prior.support)``
  (:func:`theta_standardisation`), so no mass
  leaks past a bounded prior's box (measured: with θ itself, the round-1 estimate on the synthetic patient put
  so little mass inside the prior that sbi's rejection sampling of round 2 accepted 0.000 %);
- ``"nsf"``: a neural spline flow (Durkan et al. 2019) with the same loss, sbi's best general estimator,
  for contrast;
- ``"npse"``: score-based NPE (Geffner et al. 2023; Sharrock et al. 2024), a generative diffusion model of
  θ given x;
- ``"fmpe"``: flow-matching NPE (Wildberger, Dax et al., NeurIPS 2023).

sbi 0.27 trains the two vector-field estimators only on prior-like proposals, so their later rounds draw
from the prior truncated to the current estimate's highest-density region holding 1 − ``truncation_quantile``
of its mass (TSNPE, Deistler et al., NeurIPS 2022: `sbi.utils.RestrictedPrior` with
:class:`DensityThreshold`), which needs no proposal correction.

A checkpoint is written after every round (the sbi inference object with its simulations and network, the
proposal, the round records); ``resume=True`` continues from the last one to the same result, since each
round reseeds torch from ``(seed, round)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from sbi.inference import FMPE, NPE, NPSE
from sbi.neural_nets import posterior_flow_nn, posterior_nn, posterior_score_nn
from sbi.utils import RestrictedPrior, check_dist_class
from torch import nn
from torch.distributions import Distribution, MultivariateNormal, Uniform

ESTIMATORS = ("mdn", "nsf", "npse", "fmpe")
VECTOR_FIELD = ("npse", "fmpe")
CHECKPOINT_NAME = "npe_round.pkl"
SIR_OVERSAMPLING = 8
"""Candidates per draw when sampling the truncated prior by sampling-importance-resampling from the estimate
(sbi's default of 1,024 costs that many ODE solves per simulation for the vector-field estimators)."""
SUPPORT_SAMPLES = 2000
"""Draws of the estimate that set the truncation's density threshold (sbi's default is 10⁶ ODE solves)."""

Simulator = Callable[[torch.Tensor], torch.Tensor]
"""``simulate(theta[N, P]) -> x[N, ...]``: one simulated observation per parameter row."""


@dataclass(frozen=True)
class NPESettings:
    """How sequential NPE runs.

    Attributes:
        estimator: one of :data:`ESTIMATORS` (module docstring).
        rounds: simulation rounds (1: amortized NPE from the prior).
        simulations: simulations per round.
        n_posterior: samples drawn from the final estimate.
        hidden_features: width of the estimator's networks.
        num_components: mixture components of the MDN.
        training_batch_size: sbi's training batch size.
        max_epochs: cap on training epochs per round (None: sbi's early stopping alone).
        stop_after_epochs: sbi's early-stopping patience.
        truncation_quantile: TSNPE's excluded mass for the vector-field estimators.
        atomic_loss: keep APT's atomic loss in later rounds where sbi would switch an MDN to its closed-form
            (non-atomic) loss, i.e. under a Gaussian or box-uniform prior: that loss can meet a proposal
            posterior whose precision is not positive definite in float32 (sbi issues #328, #669).
        seed: seeds every draw and every network initialisation.
        device: torch device of training.
    """

    estimator: str = "mdn"
    rounds: int = 4
    simulations: int = 1000
    n_posterior: int = 4000
    hidden_features: int = 50
    num_components: int = 10
    training_batch_size: int = 100
    max_epochs: int | None = None
    stop_after_epochs: int = 20
    truncation_quantile: float = 1e-4
    atomic_loss: bool = False
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; available: {', '.join(ESTIMATORS)}")
        for name in ("rounds", "simulations", "n_posterior", "hidden_features", "num_components",
                     "training_batch_size", "stop_after_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 or None, got {self.max_epochs}")
        if not 0 < self.truncation_quantile < 1:
            raise ValueError(f"truncation_quantile must lie in (0, 1), got {self.truncation_quantile}")


@dataclass(frozen=True)
class RoundRecord:
    """One round: its simulations, training epochs, best validation loss and wall time (s)."""

    index: int
    n_simulations: int
    epochs: int
    best_validation_loss: float
    wall_s: float


@dataclass(frozen=True)
class NPEResult:
    """The trained estimate (an sbi posterior with x_o as default), its samples and cost.

    Attributes:
        posterior: sbi posterior conditioned on x_o by default.
        samples: ``[n_posterior, P]`` draws from it.
        log_prob: the estimate's log density of each sample (its MAP sample is the argmax).
        rounds: per-round records.
        n_simulations: simulations spent.
        wall_s: wall time, summed over resumed sessions.
    """

    posterior: Any
    samples: torch.Tensor
    log_prob: torch.Tensor
    rounds: tuple[RoundRecord, ...]
    n_simulations: int
    wall_s: float


class NoTracker:
    """An sbi tracker that records nothing (sbi would otherwise write TensorBoard logs to ./sbi-logs)."""

    log_dir = None

    def log_metric(self, name: str, value: float, step: int | None = None) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_params(self, params: dict[str, Any]) -> None: ...

    def add_figure(self, name: str, figure: Any, step: int | None = None) -> None: ...

    def flush(self) -> None: ...


class AtomicNPE(NPE):
    """sbi's NPE (SNPE-C) with APT's atomic loss in every later round, never its closed-form MoG loss."""

    def _multiround_loss_is_per_row(self, proposal: Any) -> bool:  # sbi 0.27's switch to the closed form
        return False


def theta_standardisation(prior: Distribution, estimator: str, atomic_loss: bool = False) -> str:
    """sbi's ``z_score_theta``: the unbounded transform of the prior's support, except where sbi trains an MDN
    with its analytic APT loss (a Gaussian or box-uniform prior), which assumes an affine standardisation."""
    analytic = (estimator == "mdn" and not atomic_loss
                and check_dist_class(prior, class_to_check=(Uniform, MultivariateNormal))[0])  # sbi's own test
    return "independent" if analytic else "transform_to_unconstrained"


def build_inference(prior: Distribution, settings: NPESettings, embedding: nn.Module, z_score_x: str,
                    progress: bool) -> Any:
    """The sbi inference object for ``settings.estimator`` with ``embedding`` in front of its network."""
    common = dict(device=settings.device, tracker=NoTracker(), show_progress_bars=progress)
    if settings.estimator in ("mdn", "nsf"):
        # sbi's nflows spline flow ("nsf") refuses the unbounded transform of θ; its zuko twin takes it
        model = {"mdn": dict(model="mdn", num_components=settings.num_components), "nsf": dict(model="zuko_nsf")}
        builder = posterior_nn(**model[settings.estimator], hidden_features=settings.hidden_features,
                               embedding_net=embedding, z_score_x=z_score_x,
                               z_score_theta=theta_standardisation(prior, settings.estimator, settings.atomic_loss),
                               x_dist=prior)
        return (AtomicNPE if settings.atomic_loss else NPE)(prior=prior, density_estimator=builder, **common)
    if settings.estimator == "npse":
        builder = posterior_score_nn(embedding_net=embedding, z_score_x=z_score_x)
        return NPSE(prior=prior, vf_estimator=builder, **common)
    return FMPE(prior=prior, vf_estimator=posterior_flow_nn(embedding_net=embedding, z_score_x=z_score_x), **common)


@dataclass(frozen=True, eq=False)
class DensityThreshold:
    """The TSNPE truncation (Deistler et al. 2022): θ is kept where the estimate's log density exceeds the
    ``quantile`` of its own draws' log densities. sbi's ``get_density_thresholder`` computes the same but returns
    a closure, which a checkpoint cannot pickle; this is the picklable equivalent."""

    posterior: Any
    log_prob_threshold: float

    @classmethod
    def of(cls, posterior: Any, quantile: float, n_samples: int) -> DensityThreshold:
        """The threshold from ``n_samples`` draws of ``posterior`` (sbi's rule: the sorted log density at
        index ``int(quantile · n_samples)``)."""
        log_probs = torch.sort(posterior.log_prob(posterior.sample((n_samples,), show_progress_bars=False))).values
        return cls(posterior, float(log_probs[int(quantile * n_samples)]))

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return (self.posterior.log_prob(theta) > self.log_prob_threshold).bool()


def fingerprint(prior: Distribution, x_o: torch.Tensor, settings: NPESettings, z_score_x: str) -> str:
    """SHA-256 over x_o, a fixed draw of the prior and the settings that change samples."""
    digest = hashlib.sha256()
    digest.update(x_o.detach().cpu().numpy().tobytes())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        digest.update(prior.sample((16,)).detach().cpu().numpy().tobytes())
    sampling = {k: v for k, v in asdict(settings).items() if k not in ("device", "n_posterior")}
    digest.update(json.dumps([sampling, z_score_x], sort_keys=True).encode())
    return digest.hexdigest()


def round_seed(seed: int, index: int) -> int:
    """The torch seed of round ``index`` (independent streams per round)."""
    return int.from_bytes(hashlib.sha256(f"npe:{seed}:{index}".encode()).digest()[:7], "little")


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Pickle ``state`` to ``path`` atomically (written, synced, then renamed)."""
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        pickle.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def sequential_npe(
    prior: Distribution,
    simulate: Simulator,
    x_o: torch.Tensor,
    settings: NPESettings = NPESettings(),
    *,
    embedding: nn.Module | None = None,
    z_score_x: str = "independent",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    after_round: Callable[[RoundRecord], None] | None = None,
) -> NPEResult:
    """Sequential NPE of p(θ | x_o) with sbi (module docstring).

    Args:
        prior: a torch distribution over θ (:class:`personalize.priors.Prior` or any sbi prior).
        simulate: θ ``[N, P]`` → x ``[N, ...]`` (rows may be NaN for failed simulations; sbi drops them).
        x_o: the observation, shaped like one row of x.
        settings: estimator, rounds, budget, seed.
        embedding: network in front of the estimator (default: identity); copied, never modified.
        z_score_x: sbi's standardisation of x (``"independent"``; ``"none"`` for scans already on a unit scale:
            sbi's ``"structured"`` takes the spread across channels of a volume, not over its voxels).
        checkpoint_dir: where a checkpoint is written after every round (None: none).
        resume: continue from the checkpoint in ``checkpoint_dir``.
        progress: progress bars of training and sampling.
        after_round: called with each round's record (after its checkpoint).

    Raises:
        ValueError: a checkpoint of another run (other prior, observation or settings) under ``resume``.
    """
    digest = fingerprint(prior, x_o, settings, z_score_x)
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    state: dict[str, Any] | None = None
    if resume and path is not None and path.exists():
        with open(path, "rb") as handle:
            state = pickle.load(handle)
        if state["fingerprint"] != digest:
            raise ValueError(f"{path} holds a checkpoint of another NPE run (other prior, observation or "
                             "settings); resume with the same inputs, or start anew without resume")
        state["inference"]._tracker = NoTracker()  # sbi gives an unpickled inference a TensorBoard tracker
    if state is None:
        with torch.random.fork_rng():
            torch.manual_seed(round_seed(settings.seed, -1))
            inference = build_inference(prior, settings, nn.Identity() if embedding is None else
                                        pickle.loads(pickle.dumps(embedding)), z_score_x, progress)
        state = {"fingerprint": digest, "inference": inference, "proposal": prior, "posterior": None,
                 "rounds": [], "wall_s": 0.0}
    train_options: dict[str, Any] = {"training_batch_size": settings.training_batch_size,
                                     "stop_after_epochs": settings.stop_after_epochs,
                                     "show_train_summary": False}
    if settings.max_epochs is not None:
        train_options["max_num_epochs"] = settings.max_epochs
    vector_field = settings.estimator in VECTOR_FIELD

    inference = state["inference"]
    with torch.random.fork_rng():
        for index in range(len(state["rounds"]), settings.rounds):
            round_start = time.perf_counter()
            torch.manual_seed(round_seed(settings.seed, index))
            proposal = state["proposal"]
            if proposal is prior:
                theta = prior.sample((settings.simulations,))
            elif isinstance(proposal, RestrictedPrior):
                theta = proposal.sample((settings.simulations,), oversampling_factor=SIR_OVERSAMPLING,
                                        print_rejected_frac=False)
            else:
                theta = proposal.sample((settings.simulations,), show_progress_bars=False)
            x = simulate(theta)
            quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
            with quiet:  # sbi prints its loss choice and convergence whatever show_progress_bars says
                estimator = train_round(inference, theta, x, proposal, vector_field, train_options)
            posterior = inference.build_posterior(estimator).set_default_x(x_o)
            state["posterior"] = posterior
            if vector_field and index + 1 < settings.rounds:
                threshold = DensityThreshold.of(posterior, settings.truncation_quantile, SUPPORT_SAMPLES)
                state["proposal"] = RestrictedPrior(prior, threshold, posterior=posterior, sample_with="sir")
            else:
                state["proposal"] = posterior
            summary = inference.summary
            record = RoundRecord(index=index, n_simulations=int(theta.shape[0]),
                                 epochs=int(summary["epochs_trained"][-1]),
                                 best_validation_loss=float(summary["best_validation_loss"][-1]),
                                 wall_s=time.perf_counter() - round_start)
            state["rounds"].append(record)
            state["wall_s"] += record.wall_s
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_checkpoint(path, state)
            if after_round is not None:
                after_round(record)
        sampling_start = time.perf_counter()
        torch.manual_seed(round_seed(settings.seed, settings.rounds))
        posterior = state["posterior"]
        samples = posterior.sample((settings.n_posterior,), show_progress_bars=progress)
        log_prob = posterior_log_prob(posterior, samples, settings.estimator)
    records = tuple(state["rounds"])
    wall_s = state["wall_s"] + time.perf_counter() - sampling_start
    return NPEResult(posterior=posterior, samples=samples, log_prob=log_prob, rounds=records,
                     n_simulations=sum(r.n_simulations for r in records), wall_s=wall_s)


def train_round(inference: Any, theta: torch.Tensor, x: torch.Tensor, proposal: Any, vector_field: bool,
                options: dict[str, Any]) -> Any:
    """Add a round's simulations and train: APT with the proposal's correction, or for the vector-field
    estimators (TSNPE: truncated-prior proposals) the first-round loss."""
    if vector_field:
        return inference.append_simulations(theta, x).train(force_first_round_loss=True, **options)
    return inference.append_simulations(theta, x, proposal=proposal).train(**options)


def posterior_log_prob(posterior: Any, samples: torch.Tensor, estimator: str) -> torch.Tensor:
    """The estimate's log density of ``samples`` (unnormalised for the truncation of a bounded prior)."""
    if estimator in VECTOR_FIELD:
        return posterior.log_prob(samples)
    return posterior.log_prob(samples, norm_posterior=False)
