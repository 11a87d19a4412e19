"""Hugging Face Hub folders for every mmtok model: ``config.json`` + ``model.safetensors`` + ``README.md``.

Built on :class:`huggingface_hub.ModelHubMixin`, which records the constructor arguments as the
config and handles downloads and ``push_to_hub``. What this module adds:

- weights are always safetensors and loaded strictly: a folder whose config does not fit its weights
  fails with an error naming every missing, unexpected or differently-shaped tensor;
- the config names the model class (``mmtok_class``, ``module.QualName``), so :func:`load_pretrained`
  opens any mmtok folder without the caller knowing what is inside, by importing that module: a new
  model class loads without being listed anywhere. Only modules under ``mmtok.`` are imported and
  only classes that subclass :class:`HubMixin` are accepted, so a config cannot run arbitrary code;
- :meth:`HubMixin.record_config` is the one way a model records a resolved constructor argument
  (an inventory read from a corpus, a measured ratio) in its config, and :attr:`HubMixin.hub_config`
  reads it;
- the model card lists the recipe and the metrics measured for this checkpoint (``self.card``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelHubMixin, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmtok.errors import DataError, MissingFileError, MmtokError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"


class HubMixin(
    ModelHubMixin,
    library_name="mmtok",
    repo_url="https://github.com/mmtok/mmtok",
    tags=["mmtok"],
    license="apache-2.0",
):
    """Mix into an ``nn.Module`` whose constructor arguments are JSON values.

    ``card`` is a dict the owner fills before saving: ``{"description": str, "usage": str,
    "recipe": str, "metrics": list[dict]}``; it becomes the README model card.
    """

    card: dict[str, Any] | None = None
    store_half: bool = False  # write float32 tensors as float16 (see :func:`half_precision_state`)

    @property
    def hub_config(self) -> dict[str, Any]:
        """The constructor arguments a saved folder rebuilds this model with (a copy)."""
        return dict(self._hub_mixin_config or {})

    def record_config(self, **values: Any) -> None:
        """Record resolved constructor arguments (JSON values) in the config written by
        :meth:`save_pretrained`, e.g. the inventory a corpus path was resolved to. (The one place that
        writes huggingface_hub's ``_hub_mixin_config``.)"""
        self._hub_mixin_config = {**(self._hub_mixin_config or {}), **values}

    def _save_pretrained(self, save_directory: Path) -> None:
        # Own copies: a buffer may be a view of a larger storage (torchaudio windows) or tied to another.
        state = {name: tensor.detach().clone().contiguous() for name, tensor in self.state_dict().items()}
        if self.store_half:
            state = half_precision_state(state)
        save_file(state, str(save_directory / WEIGHTS_NAME))
        config = {"mmtok_class": class_name(type(self)), **(self._hub_mixin_config or {})}
        (save_directory / CONFIG_NAME).write_text(json.dumps(config, sort_keys=True, indent=2) + "\n")
        (save_directory / CARD_NAME).write_text(model_card(type(self).__name__, config, self.card or {}))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, **model_kwargs):
        weights = resolve_file(model_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                               force_download=force_download, local_files_only=local_files_only, token=token)
        model = cls(**model_kwargs)
        load_weights_strict(model, weights)
        return model.eval()


FLOAT16_MAX = 65504.0


def half_precision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors as float16 where their values fit float16's range; everything else unchanged.

    Halves a release folder (a Hub folder is loaded into float32 parameters, so the model computes in
    float32 with weights rounded to float16). Call :func:`round_to_half` on the model before measuring
    it, so that the measured model is the stored one.
    """
    return {name: tensor.half() if tensor.dtype == torch.float32 and tensor.abs().max() <= FLOAT16_MAX
            else tensor for name, tensor in state.items()}


@torch.no_grad()
def round_to_half(model: torch.nn.Module) -> None:
    """Round the model's weights in place to exactly what :func:`half_precision_state` stores."""
    state = model.state_dict()
    rounded = half_precision_state(state)
    model.load_state_dict({name: tensor.to(state[name].dtype) for name, tensor in rounded.items()})


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_file(model_id: str, filename: str, **download_kwargs) -> Path:
    if os.path.isdir(model_id):
        path = Path(model_id) / filename
        if not path.is_file():
            raise MissingFileError(f"{model_id}: Hub folder has no {filename}")
        return path
    local = os.path.exists(model_id) or os.path.isabs(model_id) or model_id.startswith((".", "~"))
    if local or model_id.count("/") > 1:  # a repo id is "name" or "namespace/name"
        raise MissingFileError(f"{model_id}: no such Hub folder (and not a Hub repo id)")
    return Path(hf_hub_download(repo_id=model_id, filename=filename, **download_kwargs))


def weights_digest(folder: str | os.PathLike) -> str | None:
    """SHA-256 of a local Hub folder's weights, or None for a Hub repo id (its revision names its
    weights). Recorded wherever a product of a model is kept under the model's name (a token cache, a
    distillation's pairs and student), so that one made by other weights under the same name is caught."""
    import hashlib

    weights = Path(folder) / WEIGHTS_NAME
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; an unreadable one raises a DataError naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise DataError(f"{path}: not a readable safetensors file ({error})") from error


def load_weights_strict(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into ``model``; any key or shape mismatch raises a DataError naming it."""
    load_state_strict(model, read_weights(path), source=f"{path.parent}: config.json does not fit {path.name}")


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``model.load_state_dict(state)`` with one error that lists every missing, unexpected or
    differently-shaped tensor, prefixed by ``source``."""
    expected = model.state_dict()
    problems = [f"missing from weights: {k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    problems += [f"not in the model the config builds: {k}" for k in state if k not in expected]
    problems += [
        f"shape of {k}: weights {tuple(state[k].shape)} != config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(f"{source}:\n  {listed}")
    model.load_state_dict(state, strict=True)


def import_mmtok_class(name: str | None, *, base: type, source: str) -> type:
    """The class recorded as ``name`` (``module.QualName``, a module under ``mmtok.``), imported from
    its module and checked to subclass ``base``; ``source`` names where the name was read."""
    module_name, _, qualname = (name or "").rpartition(".")
    if not isinstance(name, str) or not module_name.startswith("mmtok.") or not qualname:
        raise DataError(f"{source}: class {name!r} is not an mmtok {base.__name__} "
                        "(expected 'mmtok.<module>.<Class>')")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise DataError(f"{source}: class {name!r} is not an mmtok {base.__name__} ({error})") from error
    if not (isinstance(found, type) and issubclass(found, base)):
        raise DataError(f"{source}: {name!r} is not a {base.__name__} class")
    return found


def model_class(name: str | None, *, source: str) -> type[HubMixin]:
    """The mmtok Hub model class recorded as ``name`` (see :func:`import_mmtok_class`)."""
    return import_mmtok_class(name, base=HubMixin, source=source)


def build_from_spec(spec: Any, *, base: type, source: str) -> Any:
    """An object from ``{"class_path": "mmtok....", "init_args": {...}}`` (what LightningCLI and a Hub
    config record for an injected part), or ``spec`` itself when it is already a ``base``."""
    if isinstance(spec, base):
        return spec
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise DataError(f"{source}: expected a {base.__name__} or {{'class_path': ..., 'init_args': {{...}}}}, "
                        f"got {spec!r}")
    cls = import_mmtok_class(spec["class_path"], base=base, source=source)
    try:
        return cls(**spec.get("init_args", {}))
    except TypeError as error:
        raise DataError(f"{source}: {spec['class_path']}: {error}") from error


def load_pretrained(model_id: str | os.PathLike, **kwargs) -> HubMixin:
    """Open any mmtok Hub folder (local path or repo id) as the class its config names."""
    model_id = str(model_id)
    config_path = resolve_file(model_id, CONFIG_NAME, **{k: kwargs[k] for k in ("revision", "token") if k in kwargs})
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{config_path}: not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise DataError(f"{config_path}: expected a JSON object of constructor arguments, got {type(config).__name__}")
    cls = model_class(config.get("mmtok_class"), source=str(config_path))
    try:
        return cls.from_pretrained(model_id, **kwargs)
    except MmtokError:
        raise
    except Exception as error:  # a config that does not build the class: any error its constructor raises
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{config_path}: does not build a {cls.__name__} ({first})") from error


CODEC_USAGE = ("`mmtok encode MODEL input.wav tokens.safetensors` and "
               "`mmtok decode MODEL tokens.safetensors output.wav`")


def read_card_section(folder: str | os.PathLike, title: str) -> str | None:
    """The text of a Hub folder's model card section ``title`` (a "## ..." heading), or None. A "## " line
    inside a fenced block (a recipe's YAML comment) does not end the section."""
    card = Path(folder) / CARD_NAME
    lines = card.read_text().splitlines() if card.is_file() else []
    if title not in lines:
        return None
    section, fenced = [], False
    for line in lines[lines.index(title) + 1:]:
        if line.startswith("## ") and not fenced:
            break
        fenced ^= line.startswith("```")
        section.append(line)
    return "\n".join(section).strip()


def write_card_section(folder: str | os.PathLike, title: str, text: str) -> None:
    """Replace (or add, before the long config listing) the section ``title`` (a "## ..." heading)
    of a Hub folder's model card: where benchmarks write what they measured for the model."""
    card = Path(folder) / CARD_NAME
    body = card.read_text()
    section = f"{title}\n\n{text.strip()}\n"
    if title in body:
        body = re.compile(re.escape(title) + r".*?(?=\n## |\Z)", re.S).sub(lambda _: section, body)
    elif "\n## Config" in body:
        body = body.replace("\n## Config", "\n" + section + "\n## Config", 1)
    else:
        body = body.rstrip() + "\n\n" + section
    card.write_text(body)


def model_card(class_name: str, config: dict[str, Any], card: dict[str, Any]) -> str:
    """A model card: front matter for the Hub, then what it is, how it was trained, what it measures."""
    from mmtok.media import markdown_table

    parts = [
        "---\nlibrary_name: mmtok\nlicense: apache-2.0\ntags:\n- mmtok\n- "
        + class_name.lower() + "\n---\n",
        f"# {card.get('title', class_name)}\n",
        card.get("description", f"An mmtok `{class_name}` checkpoint."),
        "\n## Use\n",
        "```python\nfrom mmtok.hub import load_pretrained\n\nmodel = load_pretrained(\"path/or/repo-id\")\n```\n",
        "or from the shell: " + card.get("usage", CODEC_USAGE) + ".\n",
    ]
    if card.get("recipe"):
        parts.append(f"\n## Training\n\n{card['recipe']}\n")
    if card.get("metrics"):
        parts.append(f"\n## Measured metrics\n\n{card.get('metrics_note', '')}\n\n{markdown_table(card['metrics'])}")
    parts.append("\n## Config\n\n```json\n" + json.dumps(config, sort_keys=True, indent=2) + "\n```\n")
    return "\n".join(parts)
