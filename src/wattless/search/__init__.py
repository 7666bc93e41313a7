"""`wattless.search`: the accuracy-versus-energy Pareto search over recipes, resumable, shareable.

    result = search("mnist1d", "mobile-npu", trials=20, out="runs/s1")
    result.frontier[0]["metric"], result.frontier[0]["energy_j"]["mobile-npu"]

One Optuna study per (workload, target) maximises the workload's metric (test split) and minimises the
estimated joules per inference on the target. A trial is one `wattless.optimize` run of a recipe drawn from
the recipe space (`RecipeSpace`, built around seed recipes that are enqueued first), trained in
DIR/trials/N with checkpoints. Hopeless trials stop early (`TrialPruner`); limits on size, latency and
energy are Optuna constraints. The study lives in storage (default sqlite:///DIR/study.db): a search
killed at any moment continues when the same command runs again, and workers on several machines share
one study through a server storage (PostgreSQL). DIR/results.json holds the frontier beside the baselines
a user would reach for instead, and DIR/report.html shows them.

The public names are those of ``__all__``; the modules beside this file hold one idea each: constraints,
space (the recipe space), seeds (seeding and the first seed's neighbours), pruners, baseline_cache, storage,
study (its life cycle), resume, trial (objective, watcher, energy attribution), budget, workers, results,
view (the live view), quiet (Optuna's logging) and api (the `search` verb).
"""

try:
    import optuna  # noqa: F401
except ImportError as _exc:  # graceful absence: the rest of wattless works without the search extra
    raise ImportError(f"wattless.search needs optuna ({_exc}): pip install 'wattless[search]'") from _exc

from wattless.search.api import SearchOptions, run_search, search
from wattless.search.baseline_cache import BASELINES, PTQ_BASELINES, compute_baselines
from wattless.search.constraints import Constraints
from wattless.search.pruners import NoPruner, ParetoPruner, TrialPruner
from wattless.search.results import RESULTS_FILE, SearchPoint, SearchResult, load_results, pareto_front, summarize
from wattless.search.seeds import default_seeds
from wattless.search.space import RecipeSpace, SearchSpace
from wattless.search.storage import default_storage
from wattless.search.study import default_sampler, study_name

__all__ = [
    "search", "SearchResult", "SearchSpace", "RecipeSpace", "Constraints", "TrialPruner", "ParetoPruner",
    "NoPruner", "compute_baselines", "default_sampler", "default_seeds", "study_name", "default_storage",
    "pareto_front", "summarize", "load_results", "BASELINES", "PTQ_BASELINES", "RESULTS_FILE",
    "SearchOptions", "run_search", "SearchPoint",
]
