"""Training configuration: dataclasses, loadable from YAML or JSON.

A config file mirrors the dataclasses::

    seed: 0
    batch_size: 32
    model: {layers: 6, hidden: 128, heads: 4}
    pattern: {name: power}                  # equal budget at the final length by default
    task: {block_size: 32, digits: 5}
    stages: [{seq_len: 512, steps: 200}, {seq_len: 4096, steps: 2000, mix: [1024, 2048]}]
    optim: {lr: 1.0e-3, warmup_steps: 50, schedule: wsd, decay_frac: 0.2, min_lr_ratio: 0.0}
    lm_weight: 1.0                          # also learn the haystack (next-token loss)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..patterns import Pattern, equal_budget, get_pattern, pattern_names


@dataclass
class ModelConfig:
    """A small Llama (random init)."""

    layers: int = 6
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 4  # < heads: grouped-query attention
    intermediate: int = 512  # SwiGLU width
    rope_theta: float = 10000.0


@dataclass
class PatternConfig:
    """Which attention pattern every (non-full) layer uses.

    ``budget_seq_len``: take the pattern from :func:`powerattn.equal_budget` at this length
    (default: the last curriculum stage's), so every pattern has the same maximum number of
    attended blocks; ``params`` then override its parameters. ``full_layers``: indices of
    layers kept at full attention (hybrid models).
    """

    name: str = "power"
    params: dict[str, Any] = field(default_factory=dict)
    budget_seq_len: int | None = None
    full_layers: list[int] = field(default_factory=list)


@dataclass
class TaskConfig:
    """Passkey documents: ``block_size`` tokens per attention block, ``digits`` per key.

    ``heldout_keys``: training never draws a key of the held-out set that the experiments'
    evaluation draws from (:func:`powerattn.tasks.passkey.is_heldout_key`), so no evaluation
    document can have been seen in training.
    """

    block_size: int = 32
    digits: int = 5
    heldout_keys: bool = False


@dataclass
class Stage:
    """One curriculum stage: ``steps`` optimizer steps on documents of ``seq_len`` tokens.

    ``mix``: other (shorter) lengths mixed in: each step of the stage draws its length
    uniformly from ``[seq_len, *mix]`` (list a length twice to weight it twice), so that the
    model learns every length at once instead of relearning at each switch.
    """

    seq_len: int
    steps: int
    mix: list[int] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        """The lengths a step of this stage draws from (with repeats)."""
        return [self.seq_len, *self.mix]


SCHEDULES = ("cosine", "constant", "wsd")
# TrainConfig's opt-in speed options (booleans, default off).
SPEED_OPTIONS = ("fused_optim", "compile", "pin_memory")


def speed_options(names: Iterable[str] | None) -> list[str]:
    """The trainer speed options ``names`` (:data:`SPEED_OPTIONS`,
    e.g. ``["compile"]``), sorted and without repeats; ``ValueError`` naming the valid ones for
    an unknown name. They change how a step is computed, not the model trained, so they are
    recorded in each run's ``config.json`` but are no part of its identity: a run resumes with
    them switched on or off (``powerattn.training.trainer.NOT_IN_IDENTITY``)."""
    names = sorted(set(names or ()))
    bad = [n for n in names if n not in SPEED_OPTIONS]
    if bad:
        raise ValueError(f"speed options {bad} unknown; valid: {list(SPEED_OPTIONS)}")
    return names


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up over ``warmup_steps``, then, by ``schedule``:

    * ``"cosine"``: cosine decay to ``min_lr_ratio * lr`` at the last step;
    * ``"constant"``: ``lr`` to the end (a run stopped early by wall time is then not left
      half-way down a schedule planned for more steps);
    * ``"wsd"`` (warm-up, stable, decay): ``lr`` until the last ``decay_frac`` of all steps
      (every stage counted), then a linear decay to ``min_lr_ratio * lr`` at the last step.
      A run stopped by wall time before the decay starts gets none of it.
    """

    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    schedule: str = "cosine"  # one of SCHEDULES
    decay_frac: float = 0.2  # "wsd" only: the fraction of the total steps spent decaying


@dataclass
class TrainConfig:
    """A whole training run (passkey curriculum)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pattern: PatternConfig = field(default_factory=PatternConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: list[Stage] = field(
        default_factory=lambda: [Stage(512, 100), Stage(1024, 100), Stage(2048, 100)]
    )
    batch_size: int = 32
    seed: int = 0
    loss_on: str = "answer"  # "answer": the key's digits only; "all": every next token
    # With loss_on="answer": plus lm_weight x the mean next-token loss over the document's
    # other tokens (haystack, needle, question), a dense signal for learning to copy.
    lm_weight: float = 0.0
    # Fraction of the steps of stage i > 0 spent on the length of an earlier stage (drawn
    # uniformly), so that the model keeps the shorter lengths it learned first.
    replay: float = 0.0
    checkpoint_every: int = 100  # steps; a checkpoint is also written at the end
    checkpoint_every_s: float = 0.0  # also every this many seconds (0: off)
    log_every: int = 10
    device: str = "auto"  # "auto" = cuda if available, else cpu
    backend: str = "auto"  # a sparse_attention backend, or "sdpa_mask" (see training.model)
    # Speed options (opt-in; they change how a step is computed, not which model is trained,
    # so a checkpoint resumes with them on or off -- see trainer.NOT_IN_IDENTITY):
    # fused_optim: AdamW's fused kernel (one launch for every parameter) instead of foreach.
    # compile: torch.compile of the step's forward and loss (backward compiled with it), one
    #   static-shape graph per document length; float32 logits are then fused into the loss.
    # pin_memory: batches copied from pinned host memory, so that the host-to-device copy
    #   does not wait for the GPU (a pageable copy synchronises every step). CUDA only.
    fused_optim: bool = False
    compile: bool = False
    pin_memory: bool = False

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def final_seq_len(self) -> int:
        return self.stages[-1].seq_len

    @property
    def decay_steps(self) -> int:
        """The steps of the ``"wsd"`` schedule's final linear decay: ``decay_frac`` of
        :attr:`total_steps`, rounded, at least 1."""
        return max(1, round(self.optim.decay_frac * self.total_steps))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        from ..tasks.passkey import min_length  # here: tasks import the tokenizer from us

        if not 1 <= self.task.digits <= 18:
            raise ValueError(f"task.digits must be in 1..18, got {self.task.digits}")
        if not self.stages:
            raise ValueError("stages must list at least one curriculum stage")
        shortest = min_length(self.task.digits)
        for i, s in enumerate(self.stages):
            if s.steps <= 0:
                raise ValueError(f"stages[{i}].steps must be positive, got {s.steps}")
            if s.seq_len < shortest:
                raise ValueError(
                    f"stages[{i}].seq_len ({s.seq_len}) is shorter than the shortest passkey "
                    f"document ({shortest} tokens)"
                )
            bad = [n for n in s.mix if not shortest <= n <= s.seq_len]
            if bad:
                raise ValueError(
                    f"stages[{i}].mix {bad}: mixed-in lengths must lie in [{shortest}, "
                    f"{s.seq_len}] (the stage's seq_len is its longest length)"
                )
        from ..ops.api import BACKENDS

        if self.backend not in (*BACKENDS, "sdpa_mask"):
            raise ValueError(
                f"backend must be one of {(*BACKENDS, 'sdpa_mask')}, got {self.backend!r}"
            )
        if not 0.0 <= self.replay < 1.0:
            raise ValueError(f"replay must be in [0, 1), got {self.replay}")
        if self.loss_on not in ("answer", "all"):
            raise ValueError(f"loss_on must be 'answer' or 'all', got {self.loss_on!r}")
        if self.lm_weight < 0 or (self.lm_weight and self.loss_on != "answer"):
            raise ValueError(
                f"lm_weight must be >= 0, and 0 with loss_on='all' (which already trains on "
                f"every token), got {self.lm_weight} with loss_on={self.loss_on!r}"
            )
        o = self.optim
        if o.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
        if not 0.0 <= o.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
        if not 0.0 < o.decay_frac <= 1.0:
            raise ValueError(f"optim.decay_frac must be in (0, 1], got {o.decay_frac}")
        if o.schedule == "wsd" and o.warmup_steps > self.total_steps - self.decay_steps:
            raise ValueError(
                f"optim.warmup_steps ({o.warmup_steps}) runs into the wsd decay (the last "
                f"{self.decay_steps} of {self.total_steps} steps, decay_frac {o.decay_frac}): "
                "use fewer warmup_steps, a smaller decay_frac or more steps"
            )
        if self.pattern.name not in pattern_names():
            raise ValueError(
                f"pattern.name {self.pattern.name!r} is not one of {', '.join(pattern_names())}"
            )
        m = self.model
        for name in ("layers", "hidden", "heads", "kv_heads", "intermediate"):
            if getattr(m, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(m, name)}")
        if m.hidden % m.heads or m.heads % m.kv_heads:
            raise ValueError(
                f"model.hidden ({m.hidden}) must be divisible by model.heads ({m.heads}) and "
                f"model.heads by model.kv_heads ({m.kv_heads})"
            )
        bad = [i for i in self.pattern.full_layers if not 0 <= i < m.layers]
        if bad:
            raise ValueError(f"pattern.full_layers {bad} outside 0..{m.layers - 1}")
        for name in SPEED_OPTIONS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.checkpoint_every_s < 0:
            raise ValueError(f"checkpoint_every_s must be >= 0, got {self.checkpoint_every_s}")
        for name in ("batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def build_pattern(self) -> Pattern:
        """The pattern of the sparse layers (see :class:`PatternConfig`)."""
        p = self.pattern
        bs = self.task.block_size
        if p.name == "full":
            return get_pattern("full", block_size=bs)
        budget_len = p.budget_seq_len or self.final_seq_len
        base = equal_budget(budget_len, bs)[p.name]
        return get_pattern(base, **p.params) if p.params else base

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict; unknown keys raise ``ValueError``."""
        return _build(cls, data, "config")


_NESTED = {
    "model": ModelConfig,
    "pattern": PatternConfig,
    "task": TaskConfig,
    "optim": OptimConfig,
}


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    bad = sorted(set(data) - names)
    if bad:
        raise ValueError(f"{where} has unknown keys {bad}; valid: {sorted(names)}")
    missing = [
        f.name
        for f in fields
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{where} is missing {missing}")
    kwargs = {}
    for key, value in data.items():
        if cls is TrainConfig and key in _NESTED:
            value = _build(_NESTED[key], value, f"{where}.{key}")
        elif cls is TrainConfig and key == "stages":
            value = [_build(Stage, s, f"{where}.stages[{i}]") for i, s in enumerate(value)]
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"config path must end in .yaml, .yml or .json, got {path}")
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml  # a dependency of transformers, needed for training anyway

        data = yaml.safe_load(text) or {}
    return TrainConfig.from_dict(data)
