"""The recipe search behind ``strategy: auto``: train candidate recipes, keep the best on validation.

`kubegraft_trainer.run` calls `search_recipe` when a spec resolves to ``strategy: auto`` (no ``stages``, no
``classifier: linear``). Every candidate is an ordinary spec with ``strategy: stages`` (explicit stages, or
the linear classifier), run by the same `StageRunner` as a pinned run, so the winner can be written out as
``recipe.yaml`` and rerun exactly. The candidates, in order (`candidate_specs`):

1. ``linear``: logistic regression on cached bottleneck features (no epochs).
2. ``head``: the spec's head on cached features, adam 1e-3.
3. ``full-1e-3``: the whole backbone (BatchNormalization frozen, in inference mode) and the head, adam 1e-3,
   then the same at 1e-4 (a step schedule): the strongest transfer recipe measured on the developers' task
   (docs/quality.md), run first among the expensive ones so that weaker ones can be cut early.
4. ``top-<N>``: head on cached features, then the top N backbone layers, adam 1e-4, for N a quarter and a
   half of the backbone's layers.
5. ``full-1e-4``: head on cached features, then the whole backbone at adam 1e-4.
6. ``<best fine-tune>+augment``: the best backbone candidate so far again with augmentation (the spec's, or
   random horizontal flips when the spec turns none on).

Candidates on cached features run the backbone once per image (`FeatureCache`), not once per epoch. Before
every candidate the backbone gets back the weights it had when the search started and a fresh head is built
from the seed, so candidates are independent and the search is deterministic for a fixed seed (unless the time
budget cuts it). With the run's checkpoint store every candidate checkpoints per epoch in a folder of its own
and ``search.json`` records the decided candidates, so a restarted run resumes the search. The budget
(`SearchBudget`) bounds the search: a candidate whose maximum epochs would exceed the epoch budget is skipped,
and no candidate starts (and a running one stops at its next epoch end) after the time budget. Early stopping
(patience `PATIENCE`) ends every stage that stops improving, and a candidate is cut when, from the
`CUT_AFTER_EPOCHS`-th epoch of its last stage, its best validation accuracy is more than `CUT_MARGIN` below
what the leading candidate had reached after as many epochs (`_Guard`). Ties go to the earlier (cheaper)
candidate. Candidates' FineTuneRegressed notices are kept back and only the winner's reach the run's tracker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import keras
import numpy as np
import tensorflow as tf
from threadpoolctl import threadpool_limits

from kubegraft.logs import console
from kubegraft.runtime import NoticeReason
from kubegraft.spec import TransferJobSpec
from kubegraft_trainer.backbones import LoadedBackbone
from kubegraft_trainer.checkpoints import CheckpointStore, RunState, spec_hash
from kubegraft_trainer.model import TransferModel, backbone_layers, build_transfer_model
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.selection import Selection, select_published
from kubegraft_trainer.stages import ImageSource, StageRecord, StageRunner, predict_split
from kubegraft_trainer.tensorboard_log import TensorBoardLog

log = logging.getLogger(__name__)

CUT_AFTER_EPOCHS = 4
CUT_MARGIN = 0.05
HEAD_EPOCHS = 30
WARMUP_EPOCHS = 10
FINETUNE_EPOCHS = 20
FULL_EPOCHS = 30
ANNEAL_EPOCHS = 15
PATIENCE = 5
# The search's own state in the run's checkpoint folder: finished candidates, for a restarted run.
SEARCH_STATE = "search.json"

__all__ = [
    "CandidateHook",
    "CandidateResult",
    "SearchOutcome",
    "candidate_specs",
    "search_recipe",
]


# Called with each trained candidate's name, result and model, before the next one changes the backbone.
CandidateHook = Callable[[str, "CandidateResult", TransferModel], None]


class _NoCheckpoints(CheckpointStore):
    """A checkpoint store that stores nothing: search candidates restart with the search, not per epoch."""

    def __init__(self, run_id: str) -> None:  # no storage opened
        self.run_id = run_id
        self.spec_digest = ""
        self.state = RunState("")

    def load(self) -> RunState | None:
        """Nothing saved."""
        return None

    def save_epoch(self, **_: Any) -> None:
        """Save nothing."""

    def finish_stage(self, index: int, model: keras.Model, record: dict[str, Any]) -> None:
        """Save nothing."""

    def child(self, name: str, spec_digest: str) -> CheckpointStore:
        """Another store that stores nothing."""
        return _NoCheckpoints(f"{self.run_id}/{name}")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """Nothing saved."""
        return None

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Save nothing."""

    def delete(self) -> None:
        """Nothing to delete."""


class _CandidateTracker:
    """The run's tracker for one candidate: progress goes through, notices wait for the choice.

    A losing candidate's guard-rail notice (FineTuneRegressed) says nothing about the published model; the
    winner's notices are replayed on the run's tracker once it is chosen.
    """

    def __init__(self, tracker: ProgressTracker) -> None:
        self._tracker = tracker
        self.notices: list[tuple[str, str]] = []

    def add_notice(self, reason: str, message: str) -> None:
        """Keep the notice until the candidate wins."""
        self.notices.append((reason, message))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)


class _Guard(keras.callbacks.Callback):  # type: ignore[misc]
    """Stops a candidate at an epoch end when the time budget is spent, or cuts it when it clearly loses.

    The cut compares like with like: after the candidate's k-th epoch (all its stages counted) its best
    validation accuracy must stay within `CUT_MARGIN` of the best the leading candidate had reached by its own
    k-th epoch (its final score once k passes its length). It applies only in the candidate's last stage, from
    that stage's `CUT_AFTER_EPOCHS`-th epoch, so a head warm-up is never judged as if it were the recipe.

    Args:
        deadline: `time.monotonic` value after which training stops.
        stages: Fits the candidate runs (the cut applies only to the last one).
        leader: The leading candidate's validation accuracy by epoch, best so far (cumulative maximum), and
            its final score; None when nothing ran before.
    """

    def __init__(self, deadline: float, stages: int, leader: tuple[list[float], float] | None) -> None:
        super().__init__()
        self.deadline = deadline
        self.stages = stages
        self.leader = leader
        self.fits = 0
        self.stage_epochs = 0
        self.total_epochs = 0
        self.best = 0.0
        self.curve: list[float] = []
        self.timed_out = False
        self.cut = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """A stage starts."""
        self.fits += 1
        self.stage_epochs = 0

    def _bar(self) -> float | None:
        if self.leader is None:
            return None
        curve, final = self.leader
        return curve[self.total_epochs - 1] if self.total_epochs <= len(curve) else final

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Stop on the deadline; cut a last stage that stays well below the leader at the same epoch."""
        self.stage_epochs += 1
        self.total_epochs += 1
        value = (logs or {}).get("val_accuracy")
        if value is not None:
            self.best = max(self.best, float(value))
        self.curve.append(self.best)
        if time.monotonic() > self.deadline:
            self.timed_out = True
            self.model.stop_training = True
            return
        bar = self._bar()
        if (
            bar is not None
            and value is not None
            and self.fits >= self.stages
            and self.stage_epochs >= CUT_AFTER_EPOCHS
            and self.best < bar - CUT_MARGIN
        ):
            self.cut = True
            self.model.stop_training = True


@dataclass
class CandidateResult:
    """One candidate's outcome, as written to metrics.json's ``search.candidates``."""

    name: str
    recipe: str
    status: str  # done, cut (clearly losing), timed-out, skipped (over the epoch budget)
    validation_accuracy: float | None
    seconds: float
    epochs: int
    max_epochs: int
    trains_backbone: bool
    augmented: bool
    # Best validation accuracy after each epoch, and the candidate's held-back notices (for a restart).
    curve: list[float] = field(default_factory=list, repr=False)
    notices: list[tuple[str, str]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (metrics.json's entry: without the curve and notices)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("curve", "notices")}


def _load_search(store: CheckpointStore) -> tuple[dict[str, dict[str, Any]], float]:
    """A restarted search's saved candidates by name, and the seconds it had spent (nothing saved: {}, 0)."""
    saved = store.read_json(SEARCH_STATE) or {}
    try:
        finished = {c["result"]["name"]: c for c in saved.get("candidates", [])}
        seconds = float(saved.get("seconds", 0.0))
        for entry in finished.values():
            status, curve, notices = entry["result"]["status"], entry["curve"], entry["notices"]
            if not (isinstance(status, str) and isinstance(curve, list) and isinstance(notices, list)):
                raise TypeError(f"candidate {entry['result']['name']!r} is incomplete")
    except (KeyError, TypeError, ValueError) as exc:  # not what _save_search writes: start the search over
        log.warning("ignoring an unreadable %s (%r); the search starts over", SEARCH_STATE, exc)
        return {}, 0.0
    if finished:
        log.info("search: resuming after %d candidate(s) (%.0f s spent before)", len(finished), seconds)
    return finished, seconds


def _save_search(store: CheckpointStore, results: list[CandidateResult], seconds: float) -> None:
    """Write search.json: every candidate decided so far (its result, curve and notices), the time spent."""
    candidates = [
        {"result": r.to_dict(), "curve": r.curve, "notices": [list(n) for n in r.notices]} for r in results
    ]
    store.write_json(SEARCH_STATE, {"seconds": seconds, "candidates": candidates})


@dataclass
class SearchOutcome:
    """The winner: its pinned spec, its trained model and stage records, and the search record."""

    spec: TransferJobSpec
    name: str
    parts: TransferModel
    runner: StageRunner
    candidates: list[CandidateResult] = field(default_factory=list)
    seconds: float = 0.0
    selected_on: str = "validation"
    selection: Selection | None = None

    @property
    def published(self) -> keras.Model:
        """The model to evaluate and export: the selection's winner (the transfer model without one)."""
        return self.selection.published.model if self.selection is not None else self.parts.model

    @property
    def recipe(self) -> str:
        """The published model in short form for the status: ``auto <name>: <recipe or description>``."""
        won = self.selection.published if self.selection is not None else None
        if won is None or won.kind == "transfer":
            return f"auto {self.name}: {self.runner.recipe()}"
        return (
            f"auto {won.name}: {won.description} (best transfer recipe {self.name}: {self.runner.recipe()})"
        )

    def published_view(self) -> tuple[str | None, int, float | None]:
        """Stage, epoch and validation accuracy that describe the published model in the status.

        Without this the status keeps the last candidate trained (often a weaker one, cut or not chosen).
        A pixel model or an ensemble is named as the stage, with 0 epochs (it trains none); a transfer
        model shows its last stage and the epochs it ran.
        """
        won = self.selection.published if self.selection is not None else None
        last = self.runner.records[-1] if self.runner.records else None
        if won is not None and won.kind != "transfer":
            return won.name, 0, won.validation_accuracy
        winner = next((c for c in self.candidates if c.name == self.name), None)
        accuracy = won.validation_accuracy if won is not None else None
        if accuracy is None and winner is not None:
            accuracy = winner.validation_accuracy
        if last is None:
            return None, 0, accuracy
        return last.name, last.epochs_run, accuracy

    def record(self) -> dict[str, Any]:
        """metrics.json's ``search`` entry."""
        winner = next(c for c in self.candidates if c.name == self.name)
        return {
            "strategy": "auto",
            "chosen": self.name,
            "recipe": self.runner.recipe(),
            "published": self.selection.published.name if self.selection is not None else self.name,
            "validation_accuracy": winner.validation_accuracy,
            "selected_on": self.selected_on,
            "seconds": self.seconds,
            "epochs": sum(c.epochs for c in self.candidates),
            "candidates": [c.to_dict() for c in self.candidates],
        }


def _stage(name: str, trainable: int | str, epochs: int, lr: float) -> dict[str, Any]:
    return {
        "name": name,
        "trainable": trainable,
        "epochs": epochs,
        "optimizer": "adam",
        "learningRate": lr,
        "earlyStopping": {"patience": PATIENCE},
    }


def _pinned(spec: TransferJobSpec, **fields: Any) -> TransferJobSpec:
    body = spec.model_dump(by_alias=True, exclude_none=True)
    body.pop("budget", None)
    body.pop("stages", None)
    body.update({"strategy": "stages", "classifier": "softmax", **fields})
    return TransferJobSpec.model_validate(body)


def candidate_specs(spec: TransferJobSpec, backbone_depth: int) -> list[tuple[str, TransferJobSpec]]:
    """The candidate recipes without augmentation, cheapest first (see the module docstring).

    Args:
        spec: The auto spec (its dataset, model, head and output are kept).
        backbone_depth: Layers of the backbone (`model.backbone_layers`), for the top-N fine-tunes.

    Returns:
        ``(name, spec)`` pairs; every spec has ``strategy: stages`` and no augmentation.
    """
    off: dict[str, Any] = {"augmentation": {}}
    found: list[tuple[str, TransferJobSpec]] = [
        ("linear", _pinned(spec, classifier="linear", **off)),
        ("head", _pinned(spec, stages=[_stage("head", 0, HEAD_EPOCHS, 1e-3)], **off)),
        (
            "full-1e-3",
            _pinned(
                spec,
                stages=[
                    _stage("full", "all", FULL_EPOCHS, 1e-3),
                    _stage("anneal", "all", ANNEAL_EPOCHS, 1e-4),
                ],
                **off,
            ),
        ),
    ]
    tops = sorted({max(1, backbone_depth // 4), max(1, backbone_depth // 2)})
    for top in tops:
        stages = [_stage("head", 0, WARMUP_EPOCHS, 1e-3), _stage("finetune", top, FINETUNE_EPOCHS, 1e-4)]
        found.append((f"top-{top}", _pinned(spec, stages=stages, **off)))
    stages = [_stage("head", 0, WARMUP_EPOCHS, 1e-3), _stage("full", "all", FINETUNE_EPOCHS, 1e-4)]
    found.append(("full-1e-4", _pinned(spec, stages=stages, **off)))
    return found


def _augmented(spec: TransferJobSpec, user: TransferJobSpec) -> TransferJobSpec:
    augmentation = (
        user.augmentation.model_dump(by_alias=True) if user.augmentation.enabled else {"horizontalFlip": True}
    )
    body = spec.model_dump(by_alias=True, exclude_none=True)
    body["augmentation"] = augmentation
    return TransferJobSpec.model_validate(body)


def _max_epochs(spec: TransferJobSpec) -> int:
    return sum(s.epochs for s in spec.resolved_stages())


def _epochs_after(queue: list[tuple[str, TransferJobSpec]], position: int, budget_left: int) -> int:
    """The most epochs the candidates after ``position`` may run: the rest of the queue, the augmented copy
    of a backbone-training candidate (if any may come), within the epoch budget left. Progress counts it."""
    later = sum(_max_epochs(c) for _, c in queue[position + 1 :])
    if position < len(queue):
        trains = [_max_epochs(c) for _, c in queue if any(s.trains_backbone for s in c.resolved_stages())]
        later += max(trains, default=0)
    return min(later, max(budget_left, 0))


def _accuracy(model: keras.Model, source: ImageSource, split: str) -> float:
    probabilities, labels = predict_split(model, source, split)
    return float(np.mean(np.argmax(probabilities, axis=1) == labels)) if len(labels) else 0.0


_Leader = tuple[
    float,
    str,
    TransferJobSpec,
    TransferModel,
    StageRunner,
    list[np.ndarray[Any, Any]],
    list[float],
    list[tuple[str, str]],
]


@dataclass
class _Context:
    """What every candidate of one search shares."""

    loaded: LoadedBackbone
    num_classes: int
    source: ImageSource
    tracker: ProgressTracker
    strategy: tf.distribute.Strategy
    run_id: str
    verbose: int
    extra_callbacks: Sequence[keras.callbacks.Callback]
    initial: list[np.ndarray[Any, Any]]
    deadline: float
    split: str
    tensorboard: TensorBoardLog | None = None


def _run_candidate(
    ctx: _Context,
    name: str,
    candidate: TransferJobSpec,
    result: CandidateResult,
    *,
    leader: tuple[list[float], float] | None,
    store: CheckpointStore,
) -> tuple[TransferModel, StageRunner, list[float], list[tuple[str, str]]]:
    """Train one candidate from the starting backbone and a fresh head; fill in ``result``.

    The candidate checkpoints into ``store`` like a pinned run: after a restart it resumes at its last
    finished epoch, and a candidate that had finished only reloads its final weights.
    """
    started = time.monotonic()
    seed = candidate.dataset.seed
    ctx.loaded.model.set_weights(ctx.initial)
    keras.utils.set_random_seed(seed)
    with ctx.strategy.scope():
        parts = build_transfer_model(
            ctx.loaded,
            candidate.model.head,
            ctx.num_classes,
            candidate.augmentation,
            linear=candidate.classifier == "linear",
            seed=seed,
        )
    guard = _Guard(ctx.deadline, len(candidate.resolved_stages()), leader)
    tracker = _CandidateTracker(ctx.tracker)
    runner = StageRunner(
        parts,
        candidate,
        ctx.source,
        store=store,
        tracker=cast(ProgressTracker, tracker),
        strategy=ctx.strategy,
        verbose=ctx.verbose,
        extra_callbacks=[*ctx.extra_callbacks, guard],
        tensorboard=ctx.tensorboard.child(f"search-{name}") if ctx.tensorboard is not None else None,
    )
    # scikit-learn's fit of the linear classifier: BLAS's thread pool only adds overhead for a few hundred
    # images on busy cores (20x the CPU time measured for the pixel baseline, kubegraft_trainer.baseline).
    with threadpool_limits(limits=1, user_api="blas"):
        records: list[StageRecord] = runner.run_all()
    result.validation_accuracy = _accuracy(parts.model, ctx.source, ctx.split)
    result.recipe = runner.recipe()
    result.status = "timed-out" if guard.timed_out else ("cut" if guard.cut else "done")
    result.seconds = time.monotonic() - started
    result.epochs = sum(r.epochs_run for r in records)
    console(
        f"[search] {name}: {ctx.split}_accuracy={result.validation_accuracy:.4f} "
        f"epochs={result.epochs}/{result.max_epochs} {result.seconds:.1f}s {result.status}",
        candidate=name,
        status=result.status,
    )
    return parts, runner, guard.curve, tracker.notices


def search_recipe(
    spec: TransferJobSpec,
    loaded: LoadedBackbone,
    num_classes: int,
    source: ImageSource,
    *,
    tracker: ProgressTracker,
    strategy: tf.distribute.Strategy,
    run_id: str = "search",
    verbose: int = 0,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    on_candidate: CandidateHook | None = None,
    checkpoints: CheckpointStore | None = None,
    tensorboard: TensorBoardLog | None = None,
) -> SearchOutcome:
    """Train the candidates on the training split, score them on the validation split, keep the best.

    The backbone in ``loaded`` ends with the winner's weights; the returned parts hold the winner's head.

    With ``checkpoints`` (the run's store) the search survives a restart: every candidate checkpoints in a
    folder of its own inside the run's, and ``search.json`` records each finished candidate's result,
    validation curve and notices, and the time spent. A restarted search takes those results as they were
    (a finished candidate's model is reloaded from its checkpoint, not trained again), resumes the candidate
    that was running at its last finished epoch, and counts the time already spent against the budget.

    Args:
        spec: The spec with ``strategy: auto`` (resolved).
        loaded: The backbone (health-checked already); its weights are the starting point of every candidate.
        num_classes: Number of classes.
        source: The images (train, validation; test is never read here).
        tracker: Progress: each candidate's stages, then the winner's recipe and a RecipeChosen notice.
        strategy: The distribution strategy.
        run_id: Prefix of the candidates' (unsaved) run ids, for logs.
        verbose: Keras fit verbosity.
        extra_callbacks: More Keras callbacks for every fit.
        on_candidate: Called after each candidate with its name, result and trained model (the bench scores
            every candidate on its test set with it; the choice never sees those scores).
        checkpoints: The run's checkpoint store; None checkpoints nothing (a restart starts over).
        tensorboard: The run's TensorBoard log: each candidate's stages go to ``search-<candidate>/<stage>``.

    Returns:
        The `SearchOutcome`.

    Raises:
        RuntimeError: The budget left room for no candidate at all.
    """
    started = time.monotonic()
    budget = spec.resolved_budget
    store = checkpoints if checkpoints is not None else _NoCheckpoints(run_id)
    finished, spent_before = _load_search(store)
    ctx = _Context(
        loaded=loaded,
        num_classes=num_classes,
        source=source,
        tracker=tracker,
        strategy=strategy,
        run_id=run_id,
        verbose=verbose,
        extra_callbacks=extra_callbacks,
        initial=[np.array(w) for w in loaded.model.get_weights()],
        deadline=started + 60.0 * budget.minutes - spent_before,
        split="validation" if source.count("validation") > 0 else "train",
        tensorboard=tensorboard,
    )
    queue = candidate_specs(spec, len(backbone_layers(loaded.model)))
    results: list[CandidateResult] = []
    # (score, name, spec, model, runner, backbone weights, validation curve, notices) of the leader
    best: _Leader | None = None
    best_backbone: dict[str, tuple[float, str, TransferJobSpec]] = {}  # read by the generator when due
    spent = 0
    for position, (name, candidate) in enumerate(_with_augmented(queue, spec, best_backbone)):
        max_epochs = _max_epochs(candidate)
        trains_backbone = any(s.trains_backbone for s in candidate.resolved_stages())
        augmented = candidate.augmentation.enabled
        result = CandidateResult(name, "", "skipped", None, 0.0, 0, max_epochs, trains_backbone, augmented)
        results.append(result)
        before = finished.get(name)
        if before is not None and before["result"]["status"] == "skipped":
            continue
        if before is None and (spent + max_epochs > budget.epochs or time.monotonic() > ctx.deadline):
            log.info("search: %s skipped (budget)", name)
            _save_search(store, results, spent_before + time.monotonic() - started)
            continue
        tracker.update(
            recipe=f"auto: trying {name} (candidate {len(results)})",
            search_epochs_done=spent,
            search_epochs_left=_epochs_after(queue, position, budget.epochs - spent - max_epochs),
            total_epochs=max_epochs,
            completed_epochs=0,
        )
        leader = (best[6], best[0]) if best is not None else None
        candidate_store = store.child(f"search-{name}", spec_hash(candidate))
        parts, runner, curve, notices = _run_candidate(
            ctx, name, candidate, result, leader=leader, store=candidate_store
        )
        if before is not None:  # reloaded from its checkpoint: what the first run measured stands
            result.__dict__.update(before["result"])
            curve, notices = list(before["curve"]), [(r, m) for r, m in before["notices"]]
        result.curve, result.notices = curve, notices
        _save_search(store, results, spent_before + time.monotonic() - started)
        spent += result.epochs
        if on_candidate is not None:
            on_candidate(name, result, parts)
        score = float(result.validation_accuracy or 0.0)
        if best is None or score > best[0]:
            weights = [np.array(w) for w in loaded.model.get_weights()]
            best = (score, name, candidate, parts, runner, weights, curve, notices)
        if trains_backbone and not augmented and score > best_backbone.get("best", (-1.0,))[0]:
            best_backbone["best"] = (score, name, candidate)
    if best is None:
        raise RuntimeError("the recipe search ran no candidate: its budget is too small for any of them")
    score, name, chosen, parts, runner, weights, _, notices = best
    loaded.model.set_weights(weights)
    for reason, message in notices:
        tracker.add_notice(reason, message)
    selection = select_published(
        name,
        runner.recipe(),
        parts.model,
        source,
        split=ctx.split,
        num_classes=num_classes,
        seed=spec.dataset.seed,
    )
    seconds = spent_before + time.monotonic() - started
    outcome = SearchOutcome(chosen, name, parts, runner, results, seconds, ctx.split, selection)
    _announce(outcome, tracker, score)
    return outcome


def _announce(outcome: SearchOutcome, tracker: ProgressTracker, score: float) -> None:
    """The published model's recipe in the status and the RecipeChosen notice: what won, by how much."""
    tracker.update(recipe=outcome.recipe)
    ran = sum(1 for r in outcome.candidates if r.status != "skipped")
    summary = outcome.selection.summary() if outcome.selection is not None else f"published {outcome.name}"
    tracker.add_notice(
        NoticeReason.RECIPE_CHOSEN,
        f"strategy auto {summary}; the best of {ran} transfer candidates was {outcome.name} "
        f"({outcome.runner.recipe()}, {outcome.selected_on} accuracy {score:.3f}), which recipe.yaml pins",
    )


def _with_augmented(
    queue: list[tuple[str, TransferJobSpec]],
    user: TransferJobSpec,
    best_backbone: dict[str, tuple[float, str, TransferJobSpec]],
) -> Iterator[tuple[str, TransferJobSpec]]:
    """The queue, then the best backbone-training candidate again with augmentation (if there is one)."""
    yield from queue
    found = best_backbone.get("best")
    if found is not None:
        yield f"{found[1]}+augment", _augmented(found[2], user)
