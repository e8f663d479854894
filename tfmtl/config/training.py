"""Config sections of training: Keras `fit` settings, transfer from a source
and distillation from a teacher."""

from __future__ import annotations

import dataclasses
from typing import Optional

from pydantic import StrictBool

from tfmtl.config.data import DataConfig
from tfmtl.config.section import Section, check_name, one_of
from tfmtl.errors import ConfigError


@dataclasses.dataclass
class EarlyStoppingConfig(Section):
  """Stop training when a validation metric stops improving, and keep the
  best epoch's weights (see `tfmtl.training.EarlyStopping`).

  Attributes:
    metric: a validation metric, as `evaluate` names it (e.g. `recall@10`,
      `rating_rmse`); "" : off. It is computed every `train.validate_every`
      epochs.
    patience: validations without an improvement of more than `min_delta`
      before training stops.
    min_delta: the smallest change that counts as an improvement.
    direction: `max` or `min`; "" : known from the metric's name.

  A run resumed after a crash (`train.resume`) counts from where it resumed.
  """
  metric: str = ""
  patience: int = 3
  min_delta: float = 0.0
  direction: str = ""

  def _validate(self):
    if self.patience < 1:
      raise ConfigError("patience: must be at least 1")
    if self.min_delta < 0:
      raise ConfigError("min_delta: must be non-negative")
    one_of("direction", self.direction, ("", "max", "min"))


@dataclasses.dataclass
class TrainConfig(Section):
  """Keras `fit` settings.

  Attributes:
    batch_size: global batch size.
    epochs: passes over the training split.
    optimizer: a `tf_keras.optimizers` name (`adam`, `adagrad`, `sgd`, ...)
      or `lazy_adam` (Adam that updates only the embedding rows in the
      batch: much faster with large catalogues; `tfmtl.optimizers`).
    learning_rate: the optimizer's learning rate (the peak, under a schedule).
    learning_rate_schedule: `constant`, `cosine` (decays to 0 at the last
      step) or `exponential` (times `decay_rate` every epoch), for any
      optimizer (`tfmtl.optimizers.learning_rate`).
    warmup_steps: first raise the rate linearly from 0 over this many steps.
    decay_rate: `exponential`'s factor per epoch.
    training_metrics: compute metrics on training batches (slow: the
      retrieval metric scores the whole catalogue).
    run_dir: where the trained model, vocabularies and metrics are written
      (default `runs/<name>`).
    strategy: the `tf.distribute` strategy: auto (TPU, else GPUs, else
      one device), default, mirrored, multi_worker (TF_CONFIG),
      parameter_server (TF_CONFIG) or tpu (see `tfmtl.distribute`).
    devices: the mirrored strategy's devices (default: every GPU, else CPU).
    tpu: the TPU's name or address ("": Colab's or the local one).
    shard_min_bytes: under parameter_server, variables at least this big
      are split across the parameter servers (shards of at least this size).
    checkpoint_steps: while training, checkpoints go to
      `<run_dir>.checkpoints/` at the end of every epoch or, if N > 0,
      every N steps instead (rounded up to whole calls of
      `steps_per_execution` steps); a rerun after a crash resumes from the
      last one, and the folder is removed when training completes.
    resume: resume from that folder's checkpoint (false: remove it and
      start over).
    steps_per_execution: training steps run per call into TensorFlow
      (Keras `compile`); more cuts Keras' per-step overhead (BENCHMARKS.md,
      Training speed; TPUs want 16-32). Callbacks then see every N-th step. With several replicas
      every batch then has the full size (TensorFlow's collectives in a
      multi-step loop need one shape). Unset (null): 32 on one replica or
      a TPU reading `memory` input, else 1
      (`tfmtl.distribute.steps_per_execution`); it must be 1 with
      `tfrecord` input, whose size Keras cannot count.
    jit_compile: compile the training step with XLA (Keras `compile`).
    precision: Keras' dtype policy for the model: `float32`, or mixed
      precision, `mixed_float16` (GPUs; the loss is scaled) or
      `mixed_bfloat16` (TPUs, recent CPUs): layers compute in 16 bits and
      keep float32 weights; embeddings, logits and losses stay float32.
    input: where training batches come from: `memory` (the encoded
      examples, gathered in the pipeline) or `tfrecord` (written once to
      `<run_dir>.input/` as TFRecord shards, then streamed; the files are
      split across workers, and the small dataset graph suits
      parameter-server workers and the tf.data service at any scale;
      `tfmtl.data.shards`). The folder is removed when training completes.
    input_shards: files of `tfrecord` input (at least one per worker).
    validate_every: every N epochs, the full-catalogue metrics on the
      validation split join the epoch's logs as `val_<metric>` (0: never).
    validation_users: those metrics score at most this many validation
      users, drawn once with `seed` (0: every user). Each user is scored
      against the whole catalogue, so their cost grows with users x items;
      `tfmtl evaluate` and tuning score every user.
    log_dir: TensorBoard logs go to `<log_dir>/<name>/` ("": none): the
      per-task losses and weights, the validation metrics, the learning rate.
    early_stopping: stop when a validation metric stops improving and keep
      the best epoch's weights (`EarlyStoppingConfig`).
    data_service: a tf.data service dispatcher, e.g. `grpc://host:5050`
      (`tfmtl data-service`), whose workers then read and batch the
      `tfrecord` input ("": this process does).
  """
  batch_size: int = 1024
  epochs: int = 15
  optimizer: str = "adam"
  learning_rate: float = 0.01
  learning_rate_schedule: str = "constant"
  warmup_steps: int = 0
  decay_rate: float = 0.9
  training_metrics: StrictBool = False
  run_dir: Optional[str] = None
  strategy: str = "default"
  devices: list[str] = dataclasses.field(default_factory=list)
  tpu: str = ""
  shard_min_bytes: int = 256 << 10
  checkpoint_steps: int = 0
  resume: StrictBool = True
  steps_per_execution: Optional[int] = None
  jit_compile: StrictBool = False
  precision: str = "float32"
  input: str = "memory"
  input_shards: int = 8
  validate_every: int = 1
  validation_users: int = 10_000
  log_dir: str = "logs"
  early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
  data_service: str = ""

  def _validate(self):
    for name in ("batch_size", "epochs", "learning_rate"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"{name}: must be positive")
    # pylint: disable=import-outside-toplevel
    from tfmtl.distribute import STRATEGIES
    from tfmtl.optimizers import SCHEDULES
    from tfmtl.precision import PRECISIONS
    one_of("strategy", self.strategy, STRATEGIES)
    one_of("learning_rate_schedule", self.learning_rate_schedule, SCHEDULES)
    if self.warmup_steps < 0:
      raise ConfigError("warmup_steps: must be non-negative (0: no warm-up)")
    if not 0 < self.decay_rate <= 1:
      raise ConfigError(f"decay_rate: {self.decay_rate} is not in (0, 1] (the learning "
                        "rate's factor per epoch)")
    if self.shard_min_bytes < 1:
      raise ConfigError("shard_min_bytes: must be positive")
    if self.checkpoint_steps < 0:
      raise ConfigError("checkpoint_steps: must be non-negative (0: every epoch)")
    if self.steps_per_execution is not None and self.steps_per_execution < 1:
      raise ConfigError("steps_per_execution: must be positive (null: tfmtl picks)")
    if self.validate_every < 0:
      raise ConfigError("validate_every: must be non-negative (0: never)")
    if self.validation_users < 0:
      raise ConfigError("validation_users: must be non-negative (0: every user)")
    one_of("input", self.input, ("memory", "tfrecord"))
    one_of("precision", self.precision, PRECISIONS)
    if self.input_shards < 1:
      raise ConfigError("input_shards: must be positive")
    if self.run_dir:  # "" or null: runs/<name>
      folder = self.run_dir.rstrip("/\\").replace("\\", "/").rpartition("/")[2]
      try:
        check_name(folder, "run_dir")
      except ConfigError:
        raise ConfigError(f"run_dir: {self.run_dir!r} must end in a folder name of letters, "
                          "digits, '-', '_' or '.', not starting with '.'") from None
    if self.data_service and not self.data_service.startswith(("grpc://", "grpc+local://")):
      raise ConfigError(f"data_service: {self.data_service!r} is not a dispatcher address "
                        "like grpc://host:5050")
    if self.data_service and self.input != "tfrecord":
      raise ConfigError("data_service: needs input: tfrecord (the service hands out the "
                        "input's files to its workers)")
    if self.early_stopping.metric and not self.validate_every:
      raise ConfigError("early_stopping.metric: needs validate_every > 0 (the validation "
                        "metrics it watches)")
    if self.input == "tfrecord" and (self.steps_per_execution or 1) > 1:
      raise ConfigError("steps_per_execution: must be 1 (or unset) with input: tfrecord, "
                        "whose batches Keras cannot count executions of steps in")


def _components() -> tuple[str, ...]:
  """What a pretrained model's weights are grouped into (`tfmtl.transfer`
  owns the list)."""
  from tfmtl.transfer import COMPONENTS  # pylint: disable=import-outside-toplevel
  return COMPONENTS


@dataclasses.dataclass
class TransferConfig(Section):
  """Transfer from a source domain: fine-tuning from a pretrained model (see
  `tfmtl.transfer`) and sample-based transfer (source examples mixed in).

  Attributes:
    pretrained: a run directory (`tfmtl train` writes `runs/<name>`) whose
      weights start this model; ids and tokens known to both keep their rows.
    components: what is loaded: some of `embeddings`, `towers`, `experts`,
      `heads`.
    freeze_epochs: component -> number of first epochs it stays frozen (-1:
      always), e.g. `{embeddings: 2}`.
    learning_rate_scale: the pretrained weights' learning rate as a fraction
      of `train.learning_rate`.
    l2sp: strength of the L2-SP pull toward the pretrained weights (0: off).
    source: a `data` section naming a source domain's data (by default read
      with this data's feature columns); all its interactions join the
      training split, weighted `source_weight`, while validation, test and
      the catalogue stay this data's. Ids of both domains get vocabulary rows.
    source_weight: each source interaction's loss weight (a target
      interaction's is 1, or its own `sample_weight`).
    balance: `rows` (both domains' interactions share one mean loss, so the
      larger domain dominates) or `domains` (the objective is `L_target +
      source_weight * L_source`, each domain's loss the mean over its own
      interactions, whatever their numbers; `tfmtl.data.sources.mix_source`).
  """
  pretrained: Optional[str] = None
  components: list[str] = dataclasses.field(default_factory=lambda: list(_components()))
  freeze_epochs: dict[str, int] = dataclasses.field(default_factory=dict)
  learning_rate_scale: float = 1.0
  l2sp: float = 0.0
  source: Optional[DataConfig] = None
  source_weight: float = 1.0
  balance: str = "rows"

  def _validate(self):
    from tfmtl.data.sources import BALANCES  # pylint: disable=import-outside-toplevel
    if self.source_weight <= 0:
      raise ConfigError("source_weight: must be positive")
    one_of("balance", self.balance, BALANCES)
    for field, components in (("components", self.components),
                              ("freeze_epochs", self.freeze_epochs)):
      for component in components:
        one_of(field, component, _components(), what="component")
    if any(epochs < -1 for epochs in self.freeze_epochs.values()):
      raise ConfigError("freeze_epochs: a number of epochs, or -1 for always")
    if self.learning_rate_scale < 0 or self.l2sp < 0:
      raise ConfigError("learning_rate_scale and l2sp: must be non-negative")


@dataclasses.dataclass
class DistillationConfig(Section):
  """Knowledge distillation from a trained teacher (see `tfmtl.distillation`).

  Attributes:
    teacher: a run directory (`tfmtl train`; its vocabularies may differ:
      ids and tokens are matched by their raw values, and examples whose
      user or item it lacks get no teacher term; its embeddings of each user
      and item are computed once, before training), or `ease`: the closed-form
      item-item model EASE, fitted on the training split
      (`tfmtl.teachers`); the model trained now is its student.
    weight: weight of the per-task soft losses toward a run teacher's tasks
      (0: none).
    temperature: softening temperature of those terms' scores.
    listwise_weight: weight of the listwise term: the KL divergence from the
      teacher's softmax over each user's unseen catalogue items to the
      student's retrieval scores' (0: none; needs a retrieval task).
    topk_weight: weight of ranking distillation: the teacher's `topk` best
      unseen items as the student's extra positives, rank r weighted
      exp(-r / `topk_decay`) (Tang & Wang 2018; 0: none).
    margin_weight: weight of score-difference matching (Margin-MSE) over
      every pair of a user's unseen items (0: none).
    listwise_temperature: both sides' scores are divided by it in these
      three listwise terms.
    listwise_candidates: 0 (the default): the listwise terms score every
      catalogue item at each step. N: they score, for each example, the
      teacher's N best unseen items for its user (found once, before
      training) and the batch's other items, for catalogues too large to
      score whole at every step. With N at least the catalogue's size both
      give the same terms.
    ease_lambda: EASE's L2 strength (`teacher: ease`).
    initialize: `none`, or `pca`: the student's id embeddings start at the
      teacher's, on their principal axes (as many as the student's are wide).
  """
  teacher: Optional[str] = None
  weight: float = 1.0
  temperature: float = 2.0
  listwise_weight: float = 0.0
  topk_weight: float = 0.0
  topk: int = 10
  topk_decay: float = 5.0
  margin_weight: float = 0.0
  listwise_temperature: float = 0.05
  listwise_candidates: int = 0
  ease_lambda: float = 250.0
  initialize: str = "none"

  def _validate(self):
    one_of("initialize", self.initialize, ("none", "pca"))
    if self.weight < 0:
      raise ConfigError("weight: must be non-negative")
    if min(self.listwise_weight, self.topk_weight, self.margin_weight) < 0:
      raise ConfigError("listwise_weight, topk_weight, margin_weight: must be non-negative")
    if self.listwise_temperature <= 0 or self.ease_lambda <= 0 or self.topk_decay <= 0:
      raise ConfigError("listwise_temperature, ease_lambda, topk_decay: must be positive")
    if self.topk < 1:
      raise ConfigError("topk: must be at least 1")
    if self.listwise_candidates < 0:
      raise ConfigError("listwise_candidates: must be non-negative (0: every catalogue item)")
    if self.teacher == "ease" and self.initialize != "none":
      raise ConfigError("initialize: pca starts from a model teacher's embeddings; "
                        "teacher ease has none")
    if self.temperature <= 0:
      raise ConfigError("temperature: must be positive")
