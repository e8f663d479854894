"""The experiment config: defaults, files, overrides and clear errors."""

import re

import pytest

from tfmtl.config import ConfigError, ExperimentConfig, check_name


def test_defaults_describe_the_movielens_multitask_experiment():
  config = ExperimentConfig()
  assert config.data.source == "movielens_100k"
  assert config.split.protocol == "per_user"
  assert {n: t.type for n, t in config.tasks.items()} == {
      "retrieval": "retrieval", "rating": "regression", "like": "binary"}


def test_yaml_file_round_trips(tmp_path):
  config = ExperimentConfig().with_overrides(["train.epochs=3", "tasks.like.weight=0.2"])
  path = tmp_path / "experiment.yaml"
  path.write_text(config.to_yaml())
  assert ExperimentConfig.from_file(path) == config


def test_overrides_parse_values_as_yaml():
  config = ExperimentConfig().with_overrides(
      ["model.tower_layers=[128, 64]", "train.training_metrics=true",
       "data.user_features.zip_code={type: categorical, prefix: 3}"])
  assert config.model.tower_layers == [128, 64]
  assert config.train.training_metrics is True
  assert config.data.user_features["zip_code"].prefix == 3


def test_unknown_key_is_named_with_its_path():
  with pytest.raises(ConfigError, match=r"unknown key 'model.embeding_dim'"):
    ExperimentConfig.from_dict({"model": {"embeding_dim": 3}})


def test_wrong_type_is_named_with_its_path():
  with pytest.raises(ConfigError, match=r"tasks.rating.weight: expected a number"):
    ExperimentConfig().with_overrides(["tasks.rating.weight=heavy"])


def test_out_of_range_value_is_named():
  with pytest.raises(ConfigError, match=r"split.fractions: must sum to 1"):
    ExperimentConfig.from_dict({"split": {"fractions": [0.5, 0.1, 0.1]}})


def test_unknown_enum_value_lists_the_choices():
  with pytest.raises(ConfigError, match=r"tasks.x.type: unknown value 'clicks'.*retrieval"):
    ExperimentConfig.from_dict({"tasks": {"x": {"type": "clicks"}}})


def test_malformed_yaml_names_the_file(tmp_path):
  path = tmp_path / "broken.yaml"
  path.write_text("train: {epochs: [1,\n")
  with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
    ExperimentConfig.from_file(path)


def test_missing_file_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
    ExperimentConfig.from_file(tmp_path / "nope.yaml")


def test_override_of_unknown_section_is_an_error():
  with pytest.raises(ConfigError, match=r"unknown key 'modle'"):
    ExperimentConfig().with_overrides(["modle.embedding_dim=3"])


def test_override_below_a_value_says_it_is_no_section():
  with pytest.raises(ConfigError, match=r"'train.epochs' is a value, not a section"):
    ExperimentConfig().with_overrides(["train.epochs.x=1"])


def test_an_empty_override_is_the_empty_string():
  assert ExperimentConfig().with_overrides(["train.log_dir="]).train.log_dir == ""


def test_override_without_equals_sign_is_an_error():
  with pytest.raises(ConfigError, match=r"expected key.path=value"):
    ExperimentConfig().with_overrides(["train.epochs"])


def test_ranking_task_without_label_is_an_error():
  with pytest.raises(ConfigError, match=r"tasks.score.label: a regression task needs"):
    ExperimentConfig.from_dict({"tasks": {"score": {"type": "regression"}}})


def test_gated_multitask_blocks_need_layers():
  with pytest.raises(ConfigError, match=r"model.multitask.layers: a mmoe block needs"):
    ExperimentConfig.from_dict({"model": {"multitask": {"type": "mmoe"}}})


def test_unknown_loss_weighting_is_named():
  with pytest.raises(ConfigError, match=r"model.loss_weighting.type: unknown value 'gradnrm'"):
    ExperimentConfig().with_overrides(["model.loss_weighting.type=gradnrm"])


def test_implicit_task_needs_no_label_but_classification_does():
  config = ExperimentConfig.from_dict({"tasks": {"watched": {"type": "implicit"}}})
  assert config.tasks["watched"].num_negatives == 4
  with pytest.raises(ConfigError, match=r"tasks.genre.label: a classification task needs"):
    ExperimentConfig.from_dict({"tasks": {"genre": {"type": "classification"}}})


def test_recommend_weights_name_retrieval_or_ranking_tasks():
  config = ExperimentConfig().with_overrides(["export.recommend_weights={like: 2, retrieval: 1}"])
  assert config.export.recommend_weights == {"like": 2.0, "retrieval": 1.0}
  with pytest.raises(ConfigError, match=r"export.recommend_weights: 'likes' is not a retrieval"):
    ExperimentConfig().with_overrides(["export.recommend_weights={likes: 1}"])
  with pytest.raises(ConfigError, match=r"export.keep_versions: must be non-negative"):
    ExperimentConfig().with_overrides(["export.keep_versions=-1"])


def test_several_steps_a_call_with_tfrecord_input_is_a_config_error():
  with pytest.raises(ConfigError, match=r"train.steps_per_execution: must be 1 \(or unset\) "
                                        r"with input: tfrecord"):
    ExperimentConfig().with_overrides(["train.input=tfrecord", "train.steps_per_execution=8"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "train.epochs: must be positive"),
    ("train.learning_rate=-0.1", "train.learning_rate: must be positive"),
    ("train.batch_size=0", "train.batch_size: must be positive"),
    ("train.validation_users=-1", r"train.validation_users: must be non-negative \(0: every"),
    ("evaluate.batch_size=0", "evaluate.batch_size: must be positive"),
    ("model.tower_layers=[64, 0]", r"model.tower_layers: layer widths must be at least 1, "
                                   r"got \[64, 0\]"),
    ("model.multitask.layers=[-8]", r"model.multitask.layers: layer widths must be at least 1"),
    ("tasks.rating.layers=[0]", r"tasks.rating.layers: layer widths must be at least 1"),
    ("transfer.freeze_epochs={towrs: 2}", r"transfer.freeze_epochs: unknown component 'towrs'"),
])
def test_each_bad_number_names_its_own_key(override, message):
  with pytest.raises(ConfigError, match=message):
    ExperimentConfig().with_overrides([override])


def test_an_empty_separator_names_the_feature():
  with pytest.raises(ConfigError, match=r"data.item_features.genres.separator: must not be empty"):
    ExperimentConfig().with_overrides(
        ['data.item_features.genres={type: multi_categorical, separator: ""}'])


def test_a_float_in_e_notation_is_read_from_a_file(tmp_path):
  path = tmp_path / "lr.yaml"
  path.write_text("train:\n  learning_rate: 1e-3\n")
  learning_rate = ExperimentConfig.from_file(path).train.learning_rate
  assert learning_rate == 0.001 and isinstance(learning_rate, float)


@pytest.mark.parametrize("written, value", [
    ("1e-3", 0.001), ("1E3", 1000.0), ("-2.5e+4", -25000.0), (".5", 0.5), ("1.0e-3", 0.001)])
def test_every_written_float_is_read_from_an_override(written, value):
  threshold = ExperimentConfig().with_overrides([f"tasks.like.threshold={written}"]).tasks[
      "like"].threshold
  assert threshold == value and isinstance(threshold, float)


def test_learning_rate_override_in_e_notation():
  learning_rate = ExperimentConfig().with_overrides(["train.learning_rate=1e-3"]).train.learning_rate
  assert learning_rate == 0.001 and isinstance(learning_rate, float)


@pytest.mark.parametrize("text, key, lines", [
    ("name: a\nseed: 1\nname: b\n", "name", "1 and 3"),
    ("name: a\ntrain:\n  epochs: 2\n  batch_size: 8\n\n  # again\n  epochs: 3\n",
     "train.epochs", "3 and 7"),
])
def test_a_key_written_twice_names_its_path_and_both_lines(tmp_path, text, key, lines):
  path = tmp_path / "tiny.yaml"
  path.write_text(text)
  with pytest.raises(ConfigError, match=rf"^.*tiny\.yaml: key '{re.escape(key)}' appears "
                                        rf"twice \(lines {lines}\)$"):
    ExperimentConfig.from_file(path)


@pytest.mark.parametrize("key", ["train.learning_rate", "tasks.like.weight"])
@pytest.mark.parametrize("written, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf")])
def test_a_non_finite_float_is_rejected_naming_its_key(key, written, shown):
  with pytest.raises(ConfigError, match=rf"^{key}: expected a finite number, got {shown}$"):
    ExperimentConfig().with_overrides([f"{key}={written}"])


def test_a_binary_file_is_not_a_text_yaml_file(tmp_path):
  path = tmp_path / "image.yaml"
  path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
  with pytest.raises(ConfigError, match=r"image\.yaml: not a text YAML file \("):
    ExperimentConfig.from_file(path)


def test_a_folder_is_no_config_file(tmp_path):
  (tmp_path / "configs.yaml").mkdir()
  with pytest.raises(ConfigError, match=r"configs\.yaml: is a folder, not a config file"):
    ExperimentConfig.from_file(tmp_path / "configs.yaml")


@pytest.mark.parametrize("name", [".", "..", ".x", ""])
def test_a_name_that_is_no_plain_folder_name_is_rejected(name):
  with pytest.raises(ConfigError, match=rf"^name: {name!r} must be letters, digits"):
    ExperimentConfig().with_overrides([f"name={name!r}"])


def test_check_name_returns_a_good_name_and_names_the_field_of_a_bad_one():
  assert check_name("ml-100k_v1.2", "export.name") == "ml-100k_v1.2"
  with pytest.raises(ConfigError, match=r"^model: 'a/b' must be letters"):
    check_name("a/b", "model")


@pytest.mark.parametrize("run_dir", [".", "..", "runs/..", "runs/.hidden"])
def test_a_run_dir_not_ending_in_a_folder_name_is_rejected(run_dir):
  with pytest.raises(ConfigError, match=rf"^train\.run_dir: {run_dir!r} must end in a folder "
                                        r"name"):
    ExperimentConfig().with_overrides([f"train.run_dir={run_dir!r}"])


def test_a_run_dir_ending_in_a_folder_name_is_kept():
  assert ExperimentConfig().with_overrides(["train.run_dir=runs/a.1"]).train.run_dir == "runs/a.1"


def test_yaml_round_trip_keeps_floats_and_string_lookalikes(tmp_path):
  config = ExperimentConfig().with_overrides(
      ["train.learning_rate=1e-5", "tasks.like.weight=2.5e+4", "train.tpu='1e3'",
       "train.log_dir='yes'"])
  path = tmp_path / "experiment.yaml"
  path.write_text(config.to_yaml())
  assert ExperimentConfig.from_file(path) == config


def _declared_choices():
  """Each config choice and the values its implementing module declares."""
  from tfmtl import distribute, features, precision, transfer, weighting
  from tfmtl.data import files, sources, splits
  from tfmtl.layers import multitask, sequence
  from tfmtl.serving import index
  from tfmtl.tasks import TASK_TYPES
  return [("train.strategy", distribute.STRATEGIES), ("train.precision", precision.PRECISIONS),
          ("export.index", index.INDEXES),
          ("export.partitioned.quantization", index.QUANTIZATIONS),
          ("data.format", files.FILE_FORMATS),
          ("data.source", sources.SOURCES), ("split.protocol", splits.PROTOCOLS),
          ("model.multitask.type", multitask.BLOCKS), ("model.loss_weighting.type",
                                                       weighting.SCHEMES),
          ("model.sequence.type", ("none",) + sequence.POOLINGS),
          ("data.user_features.x.type", features.FEATURE_TYPES),
          ("tasks.x.type", tuple(TASK_TYPES)), ("transfer.components", transfer.COMPONENTS)]


# what a value needs beside it to make a valid config
_NEEDS = {"files": ["data.interactions=a.csv"], "vector": ["data.user_features.x.dim=2"],
          "mmoe": ["model.multitask.layers=[8]"], "ple": ["model.multitask.layers=[8]"],
          "shared_bottom": ["model.multitask.layers=[8]"],
          "regression": ["tasks.x.label=rating"], "binary": ["tasks.x.label=rating",
                                                             "tasks.x.threshold=4"],
          "classification": ["tasks.x.label=genres"], "reconstruction": ["tasks.x.label=genres"],
          "autoencoder": ["tasks.x.label=genres"],
          "retrieval": ["tasks={x: {type: retrieval}}"],
          "given": ["data.source=files", "data.train=a.csv", "data.test=b.csv"]}


@pytest.mark.parametrize("key, values", _declared_choices(), ids=lambda v: str(v)[:24])
def test_a_choice_takes_exactly_the_values_its_module_declares(key, values):
  for value in values:
    written = f"[{value}]" if key == "transfer.components" else value
    loaded = ExperimentConfig().with_overrides(_NEEDS.get(value, []) + [f"{key}={written}"])
    for part in key.split("."):
      loaded = loaded[part] if isinstance(loaded, dict) else getattr(loaded, part)
    assert loaded == ([value] if key == "transfer.components" else value)
  written = "[nope]" if key == "transfer.components" else "nope"
  with pytest.raises(ConfigError, match=rf"{re.escape(key)}.*: unknown \w+ 'nope'; expected one "
                                        rf"of {re.escape(', '.join(values))}$"):
    ExperimentConfig().with_overrides(_NEEDS.get(values[-1], []) + [f"{key}={written}"])


@pytest.mark.parametrize("overrides, message", [
    (["train.early_stopping.metric=recal@10"], r"train.early_stopping.metric: 'recal@10' is not "
                                               r"a validation metric .* expected one of .*recall@10"),
    (["train.early_stopping.metric=recall@10", "train.validate_every=0"],
     r"train.early_stopping.metric: needs validate_every > 0"),
    (["train.early_stopping.patience=0"], r"train.early_stopping.patience: must be at least 1"),
    (["train.learning_rate_schedule=linear"], r"train.learning_rate_schedule: unknown value "
                                              r"'linear'"),
    (["train.decay_rate=1.5"], r"train.decay_rate: 1.5 is not in \(0, 1\]"),
    (["model.multitask.coupling_pairs=[[rating, retrieval]]"],
     r"model.multitask.coupling_pairs: 'retrieval' is not a ranking task"),
    (["model.multitask.coupling=1", "tasks.like.layers=[8]"],
     r"model.multitask.coupling_pairs: the heads of 'rating' and 'like' have different layers"),
    (["model.sequence.content=true"], r"model.sequence.content: the history reads item content "
                                      r"only with a type"),
    (["model.sequence.type=gru", "model.sequence.content=true"],
     r"model.sequence.content: the history reads the items' content vectors, which need "
     r"content.encoder"),
])
def test_training_controls_that_cannot_work_name_their_key(overrides, message):
  with pytest.raises(ConfigError, match=message):
    ExperimentConfig().with_overrides(overrides)


def test_config_files_layer_in_order(tmp_path):
  """A user's data config, then a tuned model config: the data stays theirs."""
  mine, tuned = tmp_path / "mine.yaml", tmp_path / "tuned.yaml"
  mine.write_text("name: mine\ndata: {source: files, interactions: /data/all.csv}\n"
                  "train: {epochs: 3, batch_size: 64}\n"
                  "tasks: {retrieval: {type: retrieval}, clicks: {type: binary, label: c, "
                  "threshold: 1}}\n")
  tuned.write_text("model: {multitask: {type: mmoe, layers: [64]}}\n"
                   "train: {learning_rate: 0.002}\n"
                   "tasks: {retrieval: {type: retrieval, temperature: 0.2}}\n")
  config = ExperimentConfig.from_file(mine, tuned)
  assert (config.name, config.data.source, config.data.interactions) == (
      "mine", "files", "/data/all.csv")
  assert (config.train.epochs, config.train.batch_size, config.train.learning_rate) == (
      3, 64, 0.002)
  assert config.model.multitask.type == "mmoe" and config.model.multitask.layers == [64]
  assert list(config.tasks) == ["retrieval"]  # a mapping of named entries: replaced whole
  assert ExperimentConfig.from_file(tuned, mine).model.multitask.type == "mmoe"
  tuned.write_text("train: {epochs: none}\n")
  with pytest.raises(ConfigError, match=r"tuned.yaml: train.epochs: expected an integer"):
    ExperimentConfig.from_file(mine, tuned)


def test_data_paths_are_the_config_files_and_written_absolute(tmp_path, monkeypatch):
  folder = tmp_path / "project"
  (folder / "data").mkdir(parents=True)
  (folder / "mine.yaml").write_text(
      "data: {source: files, interactions: data/*.csv, users: data/users.csv}\n"
      "transfer: {source: {source: files, interactions: ../elsewhere/source.csv}}\n"
      "train: {run_dir: runs/mine}\n")
  monkeypatch.chdir(tmp_path)  # another folder than the config's
  config = ExperimentConfig.from_file("project/mine.yaml")
  assert config.data.interactions == "project/data/*.csv"  # as seen from here
  assert config.data.users == "project/data/users.csv"
  assert config.transfer.source.interactions == "elsewhere/source.csv"
  assert ExperimentConfig.from_file(folder / "mine.yaml").data.users == str(
      folder / "data" / "users.csv")
  assert config.train.run_dir == "runs/mine"  # outputs: the working directory's
  written = tmp_path / "elsewhere" / "copy.yaml"
  written.parent.mkdir()
  overridden = config.with_overrides(["data.items=items.csv"])  # the command line's folder
  written.write_text(overridden.to_yaml())
  again = ExperimentConfig.from_file(written)  # written absolute
  assert again.data.items == str(tmp_path / "items.csv")
  assert again.data.interactions == str(folder / "data" / "*.csv")
