"""Recipes: reading, layering and validating them, and the stage notebooks' `parameters` cells.

The config dataclasses themselves, the names they allow, their own validation and `build` are in schema.py
(which imports nothing from the package); every name of it is importable from here too.

A recipe is a small YAML file (notebooks/params/<name>.yaml) with run-level keys and one section per stage;
layering is dataclass defaults < recipe < `--set section.key=value` on the command line. Each stage has one
frozen dataclass whose fields are exactly its notebook's `parameters` cell; the pipeline fills
the shared fields (run_dir, iteration, iterations, task, seed) and the recipe section fills the rest.

Everything is validated before any heavy work: an unknown key, a value of the wrong type or out of range
fails at once with a message naming the recipe, the key and what is allowed.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import yaml

from .schema import (  # noqa: F401  (re-exported: config is where recipes and stage configs are imported from)
    ARMS,
    CONTROLS,
    FRESH_FIELDS,
    LATER_FIELDS,
    LEVELS,
    LLAMA_LINEAR,
    MATH_SUBJECTS,
    OPTIMIZERS,
    PAIRINGS,
    PARADIGMS,
    REAL_TASKS,
    SECTIONS,
    SHARED,
    SPLITS,
    STAGES,
    TASKS,
    TRAIN_KINDS,
    ArithConfig,
    DataConfig,
    DeepConfig,
    EvaluateConfig,
    OrganismConfig,
    RecipeError,
    RunConfig,
    SampleConfig,
    Section,
    StageConfig,
    Thresholds,
    TrainConfig,
    VerifyConfig,
    build,
    gold_split,
    lineage,
    run_name_problem,
    train_kind,
)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float: YAML 1.1 (PyYAML) wants a dot (`1.0e-4`) and would
    hand the string '1e-4' to a float field; YAML 1.2's float syntax, as in recipes people write."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
# No YAML 1.1 timestamps either (YAML 1.2 has none): `name: 2024-01-01` is the string a recipe means, not a date.
_YamlLoader.yaml_implicit_resolvers = {
    c: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for c, resolvers in _YamlLoader.yaml_implicit_resolvers.items()}


class YamlRefused(yaml.YAMLError):
    """YAML that parses but that a recipe refuses (an alias, a repeated key); the message is one line."""


def _compose_node(self, parent, index):
    # Aliases are refused, anchors alone are harmless (issue 20: a 419-byte recipe of nested aliases, a "billion
    # laughs", took 332 MB once its values were copied). Refusing every alias is our choice: recipes are small
    # and can write a value twice; bounding the expansion instead would still let a small file cost a lot.
    if self.check_event(yaml.AliasEvent):
        event = self.peek_event()
        raise YamlRefused(f"alias *{event.anchor} at line {event.start_mark.line + 1}: YAML aliases are refused "
                          "(write the value out where it is used)")
    return yaml.SafeLoader.compose_node(self, parent, index)


def _construct_mapping(self, node, deep=False):
    # A key given twice is refused (issue 20): YAML forbids it, and PyYAML would keep the last one silently.
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key, line = self.construct_object(key_node), key_node.start_mark.line + 1
        if key in seen:
            raise YamlRefused(f"duplicate key {key!r} at line {line} (first at line {seen[key]})")
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(self, node, deep=deep)


_YamlLoader.compose_node = _compose_node
_YamlLoader.construct_mapping = _construct_mapping


def yaml_problem(e: Exception) -> str:
    """A YAML error in one line: what and where (PyYAML's own message spans several lines with a snippet)."""
    if isinstance(e, YamlRefused):
        return str(e)
    if isinstance(e, RecursionError):
        return "nested too deeply"
    mark = getattr(e, "problem_mark", None)
    what = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"not valid YAML: {what}{where}".split())


def load_yaml(text: str):
    """A recipe or a command-line value as YAML (`learning_rate: 1e-4` is a float). Refuses aliases and
    repeated keys (YamlRefused)."""
    return yaml.load(text, Loader=_YamlLoader)


def parse_value(value: str, item: str, what: str = "override"):
    """A command-line value (`--set key=VALUE`) as YAML; RecipeError naming `item` if it is not valid YAML."""
    try:
        return load_yaml(value)
    except (yaml.YAMLError, RecursionError) as e:
        raise RecipeError(f"{what} {item!r}: {yaml_problem(e)}") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`section.key=value` or `key=value` strings over a raw recipe; values are parsed as YAML."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key=value or section.key=value")
        key, value = item.split("=", 1)
        *section, leaf = key.strip().split(".")
        target = out
        for s in section:
            target = target.setdefault(s, {})
            if not isinstance(target, dict):
                raise RecipeError(f"override {item!r}: '{s}' is not a section")
        target[leaf] = parse_value(value, item)
    return out


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load and fully validate a recipe: the run keys, the organism and every stage at every iteration."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe not found: {path}")
    if not path.is_file():
        raise RecipeError(f"recipe {path}: a folder, not a YAML file (`selfimprove grid` runs a folder of recipes)")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise RecipeError(f"recipe {path}: {yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        raw = apply_overrides(raw, overrides or [])
    except TypeError as e:  # an explicit YAML tag such as !!binary or !!set
        raise RecipeError(f"recipe {path}: values must be strings, numbers, booleans, lists or mappings: {e}") from None
    named = "name" in raw
    raw.setdefault("name", path.stem)
    if isinstance(raw["name"], str) and (problem := run_name_problem(raw["name"])) is not None:  # issue 20
        raise RecipeError(f"recipe {path}: {problem}" + ("" if named else " (a recipe without `name:` is named "
                                                                            "after its file; set `name:`)"))
    cfg = build(RunConfig, raw, f"recipe {path}")
    check_recipe(cfg, path)
    return cfg


def check_recipe(cfg: RunConfig, path: str | Path) -> None:
    """The rules that span sections (each section was checked as `cfg` was made, schema.Section): `data:` applies
    to the task; every stage builds at every iteration for every member of a study; evaluate's k and diversity
    sets fit sample's responses per problem; the gold arm has its fresh problems."""
    from .tasks import TaskDataError, plan

    if cfg.task != "arith":
        try:
            plan(cfg.task, cfg.data_config())  # settings that cannot apply to the task (subjects for csqa, ...)
        except TaskDataError as e:
            raise RecipeError(f"recipe '{cfg.name}', section 'data': {e}") from None
    for member in [cfg.member(p) for p in cfg.paradigms] if cfg.is_study else [cfg]:
        for t in range(1, cfg.iterations + 1):
            for stage in STAGES:
                member.stage(stage, t, "<run_dir>")
    sample, evaluate = cfg.sample, cfg.evaluate
    if max(evaluate.ks) > sample.n_eval_samples:
        raise RecipeError(f"recipe {path}: evaluate.ks {evaluate.ks} needs sample.n_eval_samples >= "
                          f"{max(evaluate.ks)} (pass@k is defined for k <= n), got {sample.n_eval_samples}")
    if evaluate.diversity_per_problem > sample.n_eval_samples:
        raise RecipeError(f"recipe {path}: evaluate.diversity_per_problem {evaluate.diversity_per_problem} needs "
                          f"sample.n_eval_samples >= {evaluate.diversity_per_problem} (no problem would have a "
                          f"full diversity set), got {sample.n_eval_samples}")
    if "gold" in cfg.paradigms and cfg.iterations >= 2:  # the positive control draws fresh gold problems
        org = cfg.organism_config().arith if cfg.task == "arith" else None
        for field, per_iteration in zip(FRESH_FIELDS, gold_split(cfg.train.gold_problems, cfg.train.gold_ood_share)):
            need, have = (cfg.iterations - 1) * per_iteration, getattr(org, field) if org else 0
            if have < need:
                raise RecipeError(
                    f"recipe {path}: the gold arm trains on {need} {field[2:]} problems over T - 1 = "
                    f"{cfg.iterations - 1} iterations (train.gold_problems x "
                    f"{'1 - ' if field == 'n_fresh' else ''}train.gold_ood_share each); "
                    + (f"organism.data.{field} is {have}: set it to at least {need}" if org
                       else f"task {cfg.task} has no held-out split of fresh problems (arith only, "
                            f"organism.data.{field})"))


def resolve_recipe(name_or_path: str, recipes_dir: Path) -> Path:
    """A recipe by path, or by name from notebooks/params/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    candidate = recipes_dir / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(x.stem for x in recipes_dir.glob("*.yaml"))
        raise RecipeError(f"no recipe named '{name_or_path}' in {recipes_dir}; known: {', '.join(known)}")
    return candidate


def parameters_cell(cls) -> str:
    """The `parameters` cell of a stage notebook: every field of `cls` as `name: type = default  # comment`,
    the comments taken from the dataclass source, so the notebook documents what the config documents."""
    import inspect

    comments: dict[str, str] = {}
    current = None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"    (\w+): [^=]+?(?: = .*?)?(?:  # (.*))?$", line)
        if m and not line.lstrip().startswith("#"):
            current = m.group(1)
            comments[current] = m.group(2) or ""
        elif current and line.strip().startswith("# "):
            comments[current] += " " + line.strip()[2:]
        else:
            current = None
    hints = typing.get_type_hints(cls)
    lines = []
    for f in fields(cls):
        hint = hints[f.name]
        type_name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = {"run_dir": "data/runs/demo", "iteration": 2 if cls is TrainConfig else 1}[f.name]
        comment = {"run_dir": "the run directory", "iteration": "t of the model M_t this stage works on",
                   "iterations": "T, the last iteration", "task": "task name", "seed": "the run's seed"}.get(
            f.name, comments.get(f.name, ""))
        if "=" in comment:  # papermill's parameter parser reads one '=' per line
            raise ValueError(f"{cls.__name__}.{f.name}: its comment must not contain '=': {comment}")
        lines.append(f"{f.name}: {type_name} = {default!r}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)
