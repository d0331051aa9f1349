"""TMCMC on three sbibm tasks, scored like sbibm, beside pymc's SMC sampler on the same likelihoods.

Run as ``python benchmarks/tmcmc_sbibm.py`` after ``make bench-deps`` (sbibm 1.1.0 into the project's venv
without its dependencies; pymc into ``.venv/bench``, a venv layered on the project's one, because pymc's
pytensor caps numba below the project's version). With ``.venv/bench/bin/python`` both samplers run; with
the project's python pymc is reported as missing. Prints figures as it goes; the last line is one JSON object.

For each task and observation: C2ST (``sbibm.metrics.c2st``: sbibm's MLP, 5 folds) of the samples against
sbibm's bundled reference posterior samples, the log-evidence with its exact value where one is known,
the number of likelihood evaluations and the wall time.

Likelihoods (sbibm's tasks give simulators, not densities; ``sbibm.algorithms`` does not run with sbi 0.27):

- gaussian_linear (10-D): θ ~ N(0, 0.1 I), x | θ ~ N(θ, 0.1 I); so x ~ N(0, 0.2 I) is the exact evidence.
- two_moons (2-D, uniform prior on [-1, 1]²): the simulator draws an angle a ~ U(-π/2, π/2) and a radius
  r ~ N(0.1, 0.01²), sets p = (r cos a + 0.25, r sin a) and returns x = p + (−|z0|, z1), (z0, z1) = θ rotated
  by −π/4. So p = x − (−|z0|, z1), and by the polar change of variables (Jacobian r)
  log p(x | θ) = log N(r; 0.1, 0.01²) − log π − log r with r = |p − (0.25, 0)|, and −∞ where p₀ < 0.25
  (|a| > π/2). sbibm's own ``_likelihood`` drops the −log π − log r terms; its reference samples, drawn
  by inverting the simulator, follow the density above. The evidence is computed by quadrature on a grid.
- slcp (5-D, uniform prior on [-3, 3]⁵): four i.i.d. 2-D draws from N(m, S), m = (θ0, θ1),
  S = [[s1², ρ s1 s2], [ρ s1 s2, s2²]] + 1e-6 I, s1 = θ2², s2 = θ3², ρ = tanh θ4. No exact evidence.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from personalize.tmcmc import tmcmc  # noqa: E402

try:
    import sbibm
    from sbibm.metrics import c2st
except ImportError:  # pragma: no cover - the benchmark needs sbibm
    sys.exit("sbibm is not installed: run `make bench-deps`")

try:
    import pymc as pm
except ImportError:
    pm = None


# ----------------------------------------------------------------------------------------------- priors
class BoxPrior:
    """sbibm's Independent(Uniform(low, high)) prior, with the seeded sampling TMCMC asks for."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        self.low, self.high = low.double(), high.double()
        self.log_volume = float(torch.log(self.high - self.low).sum())

    def sample_with(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, len(self.low), generator=generator, dtype=torch.float64)
        return self.low + (self.high - self.low) * u

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        inside = ((theta >= self.low) & (theta <= self.high)).all(-1)
        return torch.where(inside, -self.log_volume, -math.inf).double()


class GaussianPrior:
    """sbibm's MultivariateNormal prior (here isotropic), with seeded sampling."""

    def __init__(self, distribution: torch.distributions.MultivariateNormal):
        self.distribution = torch.distributions.MultivariateNormal(
            distribution.loc.double(), scale_tril=distribution.scale_tril.double())

    def sample_with(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, len(self.distribution.loc), generator=generator, dtype=torch.float64)
        return self.distribution.loc + z @ self.distribution.scale_tril.T

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        return self.distribution.log_prob(theta.double())


def wrap_prior(task):
    dist = task.get_prior_dist()
    if isinstance(dist, torch.distributions.MultivariateNormal):
        return GaussianPrior(dist)
    base = dist.base_dist
    return BoxPrior(base.low, base.high)


# ------------------------------------------------------------------------------------------ likelihoods
class GaussianLinearLikelihood:
    def __init__(self, x: torch.Tensor, variance: float = 0.1):
        self.x, self.variance = x.double().reshape(-1), variance

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        d = theta.shape[-1]
        return (-0.5 * ((theta - self.x) ** 2).sum(-1) / self.variance
                - 0.5 * d * math.log(2 * math.pi * self.variance))


ROTATION = math.pi / 4  # sbibm rotates θ by −π/4: z0 = c θ0 − s θ1, z1 = s θ0 + c θ1 with c = cos(−π/4)


class TwoMoonsLikelihood:
    def __init__(self, x: torch.Tensor):
        self.x = x.double().reshape(-1)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        c, s = math.cos(-ROTATION), math.sin(-ROTATION)
        z0 = c * theta[..., 0] - s * theta[..., 1]
        z1 = s * theta[..., 0] + c * theta[..., 1]
        u = self.x[0] + z0.abs() - 0.25  # p0 − 0.25
        v = self.x[1] - z1
        r = torch.sqrt(u**2 + v**2)
        log_l = (-0.5 * ((r - 0.1) / 0.01) ** 2 - 0.5 * math.log(2 * math.pi * 0.01**2)
                 - math.log(math.pi) - torch.log(r))
        return torch.where(u >= 0, log_l, -math.inf)


class SLCPLikelihood:
    def __init__(self, x: torch.Tensor):
        self.x = x.double().reshape(4, 2)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        theta = theta.double()
        s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, torch.tanh(theta[..., 4])
        a, c = s1**2 + 1e-6, s2**2 + 1e-6  # S = [[a, b], [b, c]]
        b = rho * s1 * s2
        det = a * c - b**2
        d0 = self.x[:, 0][None, :] - theta[..., 0:1]  # [N, 4]
        d1 = self.x[:, 1][None, :] - theta[..., 1:2]
        quadratic = (c[:, None] * d0**2 - 2 * b[:, None] * d0 * d1 + a[:, None] * d1**2) / det[:, None]
        return (-0.5 * quadratic.sum(-1) - 4 * (math.log(2 * math.pi) + 0.5 * torch.log(det)))


def two_moons_log_evidence(likelihood: TwoMoonsLikelihood, n: int = 4001) -> float:
    """log ∫ p(x|θ) p(θ) dθ by the trapezoid-free midpoint rule on an n × n grid of [-1, 1]² (crescents 0.01
    wide: step 5e-4 resolves them)."""
    centres = -1 + (torch.arange(n, dtype=torch.float64) + 0.5) * 2 / n
    total = torch.tensor(-math.inf, dtype=torch.float64)
    for row in centres.split(200):
        grid = torch.stack(torch.meshgrid(row, centres, indexing="ij"), -1).reshape(-1, 2)
        total = torch.logaddexp(total, torch.logsumexp(likelihood(grid), 0))
    return float(total + 2 * math.log(2 / n) - math.log(4.0))


# -------------------------------------------------------------------------------------------- pymc models
def pymc_model(name: str, x: np.ndarray):
    import pytensor.tensor as pt

    with pm.Model() as model:
        if name == "gaussian_linear":
            theta = pm.Normal("theta", 0.0, math.sqrt(0.1), shape=10)
            pm.Normal("x", mu=theta, sigma=math.sqrt(0.1), observed=x.reshape(-1))
        elif name == "two_moons":
            theta = pm.Uniform("theta", -1.0, 1.0, shape=2)
            c, s = math.cos(-ROTATION), math.sin(-ROTATION)
            z0 = c * theta[0] - s * theta[1]
            z1 = s * theta[0] + c * theta[1]
            u = x.reshape(-1)[0] + pt.abs(z0) - 0.25
            v = x.reshape(-1)[1] - z1
            r = pt.sqrt(u**2 + v**2)
            log_l = (-0.5 * ((r - 0.1) / 0.01) ** 2 - 0.5 * math.log(2 * math.pi * 0.01**2)
                     - math.log(math.pi) - pt.log(r))
            pm.Potential("likelihood", pt.switch(pt.ge(u, 0), log_l, -np.inf))
        elif name == "slcp":
            theta = pm.Uniform("theta", -3.0, 3.0, shape=5)
            s1, s2, rho = theta[2] ** 2, theta[3] ** 2, pt.tanh(theta[4])
            cov = pt.stack([pt.stack([s1**2 + 1e-6, rho * s1 * s2]), pt.stack([rho * s1 * s2, s2**2 + 1e-6])])
            pm.MvNormal("x", mu=theta[:2], cov=cov, observed=x.reshape(4, 2))
        else:
            raise ValueError(name)
    return model


def counting_imh():
    """pymc's default SMC kernel (IMH), recording the likelihood evaluations it makes in ``sample_stats``."""

    class CountingIMH(pm.smc.kernels.IMH):
        stats_dtypes_shapes = {**pm.smc.kernels.IMH.stats_dtypes_shapes, "n_evaluations": (np.int64, [])}

        def initialize_population(self):
            self.n_evaluations = self.draws  # the initial population's likelihoods
            return super().initialize_population()

        def mutate(self):
            super().mutate()
            self.n_evaluations += self.draws * (self.n_steps - 1)  # n_steps counts one past the last step

        def sample_stats(self):
            return {**super().sample_stats(), "n_evaluations": self.n_evaluations}

    return CountingIMH


def run_pymc(name: str, x: np.ndarray, draws: int, chains: int, seed: int):
    model = pymc_model(name, x)
    started = time.perf_counter()
    with model:
        idata = pm.sample_smc(draws=draws, chains=chains, cores=1, kernel=counting_imh(), random_seed=seed,
                              progressbar=False, compute_convergence_checks=False)
    wall = time.perf_counter() - started
    samples = idata.posterior["theta"].values.reshape(-1, idata.posterior["theta"].shape[-1])
    stats = idata.sample_stats
    def per_chain(stat):  # [chain, stage] arrays, or [chain] arrays of per-stage lists when lengths differ
        return [np.asarray(stats[stat].values[c], dtype=float).ravel() for c in range(chains)]

    per_chain_log_z = [float(v[np.isfinite(v)][-1]) for v in per_chain("log_marginal_likelihood")]
    n_eval = int(sum(np.nanmax(v) for v in per_chain("n_evaluations")))
    # the chains are independent SMC runs: the evidence of all of them is the mean of their evidences
    pooled = float(np.logaddexp.reduce(per_chain_log_z) - math.log(chains))
    return samples, pooled, per_chain_log_z, n_eval, wall


# ------------------------------------------------------------------------------------------------- main
LIKELIHOODS = {"gaussian_linear": GaussianLinearLikelihood, "two_moons": TwoMoonsLikelihood, "slcp": SLCPLikelihood}


def exact_log_evidence(name: str, x: torch.Tensor, likelihood) -> float | None:
    if name == "gaussian_linear":
        d = x.numel()
        return float(torch.distributions.MultivariateNormal(torch.zeros(d, dtype=torch.float64),
                                                            0.2 * torch.eye(d, dtype=torch.float64))
                     .log_prob(x.double().reshape(-1)))
    if name == "two_moons":
        return two_moons_log_evidence(likelihood)
    return None


def score(samples: np.ndarray, reference: torch.Tensor, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    ours = torch.as_tensor(samples[rng.permutation(len(samples))[:n]], dtype=torch.float32)
    theirs = reference[torch.as_tensor(rng.permutation(len(reference))[:n])].float()
    return float(c2st(ours, theirs, seed=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(LIKELIHOODS))
    parser.add_argument("--observations", nargs="+", type=int, default=[1])
    parser.add_argument("--samples", type=int, default=4000, help="TMCMC population; pymc: chains × draws")
    parser.add_argument("--chains", type=int, default=2, help="pymc SMC chains (independent runs)")
    parser.add_argument("--c2st-samples", type=int, default=2000,
                        help="samples per side for C2ST (sbibm uses 10,000; its MLP makes that minutes per score)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-pymc", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    use_pymc = pm is not None and not args.no_pymc
    print(f"sbibm {sbibm.__version__}; pymc {pm.__version__ if pm else 'not installed'}; "
          f"N = {args.samples}; C2ST on {args.c2st_samples} vs {args.c2st_samples} samples", flush=True)

    results = []
    for name in args.tasks:
        task = sbibm.get_task(name)
        prior = wrap_prior(task)
        for observation in args.observations:
            x = task.get_observation(observation)
            likelihood = LIKELIHOODS[name](x)
            reference = task.get_reference_posterior_samples(observation)
            exact = exact_log_evidence(name, x, likelihood)
            row = {"task": name, "observation": observation, "exact_log_evidence": exact}

            posterior = tmcmc(likelihood, prior, n_samples=args.samples, seed=args.seed,
                              parameter_names=[f"theta_{i}" for i in range(reference.shape[1])], progress=False)
            row["tmcmc"] = {"c2st": score(posterior.samples, reference, args.c2st_samples, args.seed),
                            "log_evidence": posterior.log_evidence,
                            "likelihood_evaluations": posterior.n_simulations, "wall_s": posterior.wall_s}
            if use_pymc:
                draws = args.samples // args.chains
                samples, log_z, per_chain, n_eval, wall = run_pymc(name, x.numpy(), draws, args.chains, args.seed)
                row["pymc_smc"] = {"c2st": score(samples, reference, args.c2st_samples, args.seed),
                                   "log_evidence": log_z, "log_evidence_per_chain": per_chain,
                                   "likelihood_evaluations": n_eval, "wall_s": wall}
            results.append(row)
            exact_text = "n/a" if exact is None else f"{exact:.3f}"
            print(f"{name} obs {observation}: exact log Z {exact_text}", flush=True)
            for method in ("tmcmc", "pymc_smc"):
                if method in row:
                    r = row[method]
                    print(f"  {method:9s} C2ST {r['c2st']:.3f}  log Z {r['log_evidence']:.3f}  "
                          f"evaluations {r['likelihood_evaluations']}  wall {r['wall_s']:.1f} s", flush=True)
    print(json.dumps({"benchmark": "tmcmc_sbibm", "samples": args.samples, "c2st_samples": args.c2st_samples,
                      "pymc": pm.__version__ if use_pymc else None, "results": results}))


if __name__ == "__main__":
    main()
