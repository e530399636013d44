"""config_t5.yaml → a typed, validated Config. Every mistake is found here, before any model loads.

Unknown keys get a did-you-mean; wrong types and values name the key and what it accepts.
Relative paths are read from the directory the command runs in, as the user's existing configs expect.
"""

from __future__ import annotations

import datetime
import difflib
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utils.errors import UserError
from utils.inputs.ids import ID_FORMATS
from utils.inputs.keys import (
    ATTENTION_PATHS,
    ENGINES,
    MODEL_KEYS,
    OUTPUT_FORMATS,
    PATH_KEYS,
    PRECISIONS,
    RUN_KEYS,
    SINGLE_FORMATS,
    Config,
    ModelConfig,
    RunParams,
    normalise_device,
    output_formats,
)
from utils.inputs.paths import input_file_problem

SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SEED_MAX = 2**64 - 1  # torch.manual_seed takes 0 .. 2**64 - 1
MAX_ALIASES = 100  # a YAML config has a few anchors; thousands are an alias bomb ("billion laughs")
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def shown(value: Any) -> str:
    """A value as it goes into an error line: short, whatever it is (a nested alias bomb, a megabyte string)."""
    return _SHORT.repr(value)


def _yaml_type_hint(name: Any) -> str:
    """For a key YAML did not read as text: what it read, and that quotes make it text."""
    if isinstance(name, bool):
        what = "true/false (yes, no, on, off, true and false are booleans in YAML)"
    elif isinstance(name, (datetime.date, datetime.datetime)):
        what = f"a date ({name})"
    elif isinstance(name, (int, float)):
        what = f"a number ({name})"
    else:
        what = f"a {type(name).__name__}"
    return f"YAML reads this name as {what}, not text; put the name in quotes"


@dataclass(frozen=True)
class IntSetting:
    """What an integer setting accepts; the config and the Python API (utils.Embedder) both check by INT_SETTINGS."""

    minimum: int | None = 1
    maximum: int | None = None
    auto: bool = False  # also 'auto' or no value, meaning None: chosen per device
    meaning: str = ""  # shown after "an integer" in the error

    def check(self, value: Any) -> tuple[int | None, str | None]:
        """→ (the value, None: auto) or (None, "must be …, got …")."""
        if self.auto and (value is None or (isinstance(value, str) and value.strip().lower() == "auto")):
            return None, None
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
        ):
            accepted = "an integer" + (f" ≥ {self.minimum}" if self.minimum is not None else "")
            accepted += (f" and ≤ {self.maximum}" if self.maximum is not None else "") + self.meaning
            accepted += " or auto" if self.auto else ""
            return None, f"must be {accepted}, got {'no value' if value is None else shown(value)}"
        return int(value), None


INT_SETTINGS = {  # run_params' integers and models.<key>'s, by key
    "batch_size": IntSetting(1),
    "save_every_n_batches": IntSetting(1),
    "seed": IntSetting(0, SEED_MAX),
    "max_tokens_per_batch": IntSetting(16, auto=True),
    "max_residues": IntSetting(16, auto=True),
    "window_overlap": IntSetting(0),
    "stop_grace_s": IntSetting(1),
    "stall_timeout_s": IntSetting(1),
    # The range depends on the checkpoint's depth: utils.checks.resolve checks it once config.json is read.
    "layer": IntSetting(None, meaning=" (0 = embedding output, -1 = last layer)"),
}


def window_overlap_problem(window_overlap: int | None, max_residues: int | None) -> str | None:
    """The one rule between two settings: windows must overlap by less than half of their length. Only for an
    overlap the user set: the default's is cut to a quarter of the window (utils.engine.encode.Encoder)."""
    if window_overlap is not None and max_residues is not None and window_overlap >= max_residues // 2:
        return f"must be less than half of max_residues ({max_residues})"
    return None


def setting_problems(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Settings given outside a config file (the Python API) checked by the config's own rules → (values, auto as
    None; "key: problem" lines)."""
    checked, problems = dict(values), []
    for key, value in values.items():
        checked[key], problem = INT_SETTINGS[key].check(value)
        if problem:
            problems.append(f"{key}: {problem}")
    if not problems and checked.get("window_overlap") is not None:
        problem = window_overlap_problem(checked["window_overlap"], checked.get("max_residues"))
        if problem:
            problems.append(f"window_overlap: {problem}")
    return checked, problems


_TOP_KEYS = ("paths", "run_params", "models")


class _Checker:
    """Collects problems while reading the YAML so that the user sees all of them at once."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}: {message}")

    def known_keys(self, table: dict, allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                near = difflib.get_close_matches(key.lower(), allowed, n=1) if isinstance(key, str) else []
                hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(allowed)}"
                self.add(f"{where}{shown(key) if not isinstance(key, str) else key}", f"unknown key ({hint})")

    def table(self, parent: dict, key: str, where: str, required: bool) -> dict:
        value = parent.get(key)
        if value is None:
            if required:
                self.add(f"{where}{key}", "missing; add this section")
            return {}
        if not isinstance(value, dict):
            self.add(f"{where}{key}", f"must be a mapping of keys, got {type(value).__name__}")
            return {}
        return value

    def setting(self, table: dict, key: str, where: str, default: int | None) -> int | None:
        """An integer setting, checked by its INT_SETTINGS rule; the default when absent or wrong."""
        if key not in table:
            return default
        value, problem = INT_SETTINGS[key].check(table[key])
        if problem:
            self.add(f"{where}{key}", f"{problem}; fix the value or remove the line")
            return default
        return value

    def choice(self, table: dict, key: str, where: str, default: str, choices: tuple[str, ...]) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or value not in choices:
            near = difflib.get_close_matches(value.strip().lower(), choices, n=1) if isinstance(value, str) else []
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            self.add(f"{where}{key}", f"must be one of {', '.join(choices)}, got {shown(value)}{hint}")
            return default
        return value

    def formats(self, table: dict, key: str, where: str, default: str) -> str:
        """One of OUTPUT_FORMATS, or a YAML list of single formats (kept as text joined by ',')."""
        value = table.get(key, default)
        if isinstance(value, list):
            if value and all(isinstance(v, str) and v in SINGLE_FORMATS for v in value):
                return ",".join(dict.fromkeys(value))
            self.add(f"{where}{key}", f"a list must name formats among {', '.join(SINGLE_FORMATS)}, got {value!r}")
            return default
        return self.choice(table, key, where, default, OUTPUT_FORMATS)

    def boolean(self, table: dict, key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.add(f"{where}{key}", f"must be true or false, got {shown(value)}")
            return default
        return value

    def path(self, table: dict, key: str, where: str, required: bool) -> Path | None:
        value = table.get(key)
        if value is None:
            if required:
                self.add(f"{where}{key}", "missing; give a path")
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(f"{where}{key}", f"must be a path (text), got {shown(value)}")
            return None
        return Path(value).expanduser()


class _DuplicateKey(yaml.YAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML would silently keep the last one) and more
    than MAX_ALIASES aliases (nested aliases grow exponentially when anything walks the result)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise _DuplicateKey(
                    f"line {line}: more than {MAX_ALIASES} aliases (*name); a config needs a few: write the values out"
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else []:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys overridden after a '<<' merge are not duplicates
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable key: SafeLoader reports it
            if duplicate:
                raise _DuplicateKey(
                    f"line {line}: key {shown(key)} is given twice (also on line {seen[key]}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    problem = input_file_problem(path)
    if problem:
        raise UserError(f"{path}: {problem}; pass --config with the path to your config_t5.yaml")
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass --config with the path to your config_t5.yaml")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # a SafeLoader
    except _DuplicateKey as exc:
        raise UserError(f"{path}: {exc}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{path}: cannot be read ({reason}); check its permissions") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML at {where}: {problem}; fix the indentation or quoting there") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file; save the config as plain text") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a YAML mapping with sections {', '.join(_TOP_KEYS)}")
    return data


def _read_splits(check: _Checker, paths: dict, data_dir: Path) -> dict[str, Path]:
    splits: dict[str, Path] = {}
    for split, key in (("train", "raw_train_sequences"), ("test", "raw_test_sequences")):
        file = check.path(paths, key, "paths.", required=False)
        if file is not None:
            splits[split] = file
    extra = check.table(paths, "splits", "paths.", required=False)
    for name, file in extra.items():
        where = f"paths.splits.{name}"
        if not isinstance(name, str):
            check.add(f"paths.splits.{shown(name)}", _yaml_type_hint(name))
        elif not SPLIT_NAME.match(name):
            check.add(where, "split names may use letters, digits, '_', '-' and '.' only")
        elif name in splits:
            check.add(where, f"split '{name}' is already named by raw_{name}_sequences; choose another name")
        elif not isinstance(file, str) or not file.strip():
            check.add(where, f"must be a FASTA path, got {shown(file)}")
        else:
            splits[name] = Path(file).expanduser()
    if not splits and not check.problems:
        check.add("paths", "no FASTA split named; set raw_train_sequences, raw_test_sequences or splits")
    return {name: (file if file.is_absolute() else data_dir / file) for name, file in splits.items()}


def _read_models(check: _Checker, models: dict, run: RunParams) -> tuple[ModelConfig, ...]:
    result = []
    for key, spec in models.items():
        where = f"models.{key}."
        if not isinstance(key, str):
            check.add(f"models.{shown(key)}", _yaml_type_hint(key) + " (model names become output keys and file names)")
            continue
        if not isinstance(spec, dict):
            check.add(f"models.{key}", "must be a mapping with name, device and output_key")
            continue
        check.known_keys(spec, MODEL_KEYS, where)
        name = spec.get("name")
        if not isinstance(name, str) or not name.strip():
            example = "Rostlab/prot_t5_xl_half_uniref50-enc"
            got = "missing" if name is None else f"must be text, got {shown(name)}"
            check.add(f"{where}name", f"{got}; give a hub id (e.g. {example}) or a local checkpoint directory")
            name = ""
        raw_devices = spec.get("device", "cpu")
        raw_list = raw_devices if isinstance(raw_devices, list) else [raw_devices]
        devices = tuple(normalise_device(d) for d in raw_list)
        if not raw_list or None in devices:
            accepted = "a CUDA index, 'cuda:N', 'cpu', 'auto', or a list of them"
            check.add(f"{where}device", f"must be {accepted}, got {shown(raw_devices)}")
        gpus = [d for d in devices if d and d != "cpu"]
        if len(set(gpus)) < len(gpus):
            # Shards on one GPU would only queue behind each other; [cpu, cpu] is allowed (the tests shard that way).
            check.add(f"{where}device", f"lists a GPU twice ({shown(raw_devices)}); name each GPU once")
        output_key = spec.get("output_key", str(key))
        if not isinstance(output_key, str) or not SPLIT_NAME.match(output_key) or output_key.endswith(".per_residue"):
            check.add(f"{where}output_key", "must be text of letters, digits, '_', '-' or '.', used in file names")
            output_key = str(key)
        precision = check.choice(spec, "precision", where, run.precision, PRECISIONS)
        budget = check.setting(spec, "max_tokens_per_batch", where, run.max_tokens_per_batch)
        layer = check.setting(spec, "layer", where, -1)
        device_auto = any(isinstance(d, str) and d.strip().lower() == "auto" for d in raw_list)
        result.append(
            ModelConfig(
                str(key), name, tuple(d for d in devices if d), output_key, precision, budget, layer, device_auto
            )
        )
    seen: dict[str, str] = {}
    for model in result:
        if model.output_key in seen or model.output_key == "concat":
            check.add(
                f"models.{model.key}.output_key",
                f"'{model.output_key}' is already used ({seen.get(model.output_key, 'concatenated file')}); "
                "each model needs its own output_key",
            )
        seen[model.output_key] = f"by models.{model.key}"
    if not result and not check.problems:
        check.add("models", "no model configured; add at least one under models:")
    return tuple(result)


def load_config(path: Path) -> Config:
    """Read and validate the config; raise UserError listing every problem found."""
    data = _read_yaml(path)
    check = _Checker(str(path))
    check.known_keys(data, _TOP_KEYS, "")
    paths = check.table(data, "paths", "", required=True)
    run_table = check.table(data, "run_params", "", required=False)
    models_table = check.table(data, "models", "", required=True)
    check.known_keys(paths, PATH_KEYS, "paths.")
    check.known_keys(run_table, RUN_KEYS, "run_params.")

    defaults = RunParams()
    run = RunParams(
        batch_size=check.setting(run_table, "batch_size", "run_params.", defaults.batch_size),
        save_every_n_batches=check.setting(
            run_table, "save_every_n_batches", "run_params.", defaults.save_every_n_batches
        ),
        seed=check.setting(run_table, "seed", "run_params.", defaults.seed),
        precision=check.choice(run_table, "precision", "run_params.", defaults.precision, PRECISIONS),
        max_tokens_per_batch=check.setting(run_table, "max_tokens_per_batch", "run_params.", None),
        max_residues=check.setting(run_table, "max_residues", "run_params.", None),
        window_overlap=check.setting(run_table, "window_overlap", "run_params.", defaults.window_overlap),
        concatenate=check.boolean(run_table, "concatenate", "run_params.", defaults.concatenate),
        output_format=check.formats(run_table, "output_format", "run_params.", defaults.output_format),
        per_residue=check.boolean(run_table, "per_residue", "run_params.", defaults.per_residue),
        stop_grace_s=check.setting(run_table, "stop_grace_s", "run_params.", defaults.stop_grace_s),
        engine=check.choice(run_table, "engine", "run_params.", defaults.engine, ENGINES),
        stall_timeout_s=check.setting(run_table, "stall_timeout_s", "run_params.", defaults.stall_timeout_s),
        report=check.boolean(run_table, "report", "run_params.", defaults.report),
        attention=check.choice(run_table, "attention", "run_params.", defaults.attention, ATTENTION_PATHS),
    )
    overlap = window_overlap_problem(run.window_overlap if "window_overlap" in run_table else None, run.max_residues)
    if overlap:
        check.add("run_params.window_overlap", overlap)
    if run.per_residue and "h5" not in output_formats(run.output_format):
        check.add("run_params.per_residue", "per-residue embeddings are written to HDF5; set output_format: h5 or both")

    if run.per_residue and run.engine == "ray":
        check.add("run_params.per_residue", "per-residue output is not available with engine: ray; use engine: local")
    data_dir = check.path(paths, "data_dir", "paths.", required=False) or Path(".")
    splits = _read_splits(check, paths, data_dir)
    output_dir = check.path(paths, "output_dir", "paths.", required=True)
    log_dir = check.path(paths, "log_dir", "paths.", required=False)
    store_dir = check.path(paths, "store_dir", "paths.", required=False)
    id_format = check.choice(paths, "id_format", "paths.", ID_FORMATS[0], ID_FORMATS)
    models = _read_models(check, models_table, run)
    if check.problems:
        raise UserError(check.problems)
    assert output_dir is not None
    return Config(path, splits, output_dir, log_dir or Path("logs"), run, models, id_format, store_dir)
