"""Reading checkpoints made elsewhere, for `python -m train.importer`: Hugging Face `save_pretrained`
folders (alone, or as the `checkpoint-N` folders of a Trainer run) and nanoGPT `ckpt.pt` files.

Every source becomes a `SourceCheckpoint`: its step, its training tokens when the source records
them and an HF GPT-2 config, its tensor shapes checked against that config, plus a `read()` that
loads the weights (in HF's layout) later. Scanning reads only configs, safetensors headers and lazily mapped torch files, so
every checkpoint can be checked (GPT-2 or not, shapes, pickles) before anything is written.
Pickled files are opened with `torch.load(weights_only=True)`: a file that would run code is
refused, never executed. Bad input raises BadInput with one sentence.

nanoGPT keeps its projections in `nn.Linear` ([out, in]) where HF's GPT-2 has `Conv1D` ([in, out]),
so they are transposed into HF's layout here; `model.interop.from_hf` then builds our GPT, so the
mapping onto the workbench's names exists only there.
"""
from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file as st_load_file

from model.config import GPTConfig
from model.gpt import GPT
from model.interop import BLOCK_PARAMS, config_from_hf
from model.tokenizer import GPT2_VOCAB_SIZE

from .args import BadInput

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
NANOGPT_SUFFIXES = (".pt", ".pth", ".ckpt")
# GPT2Config's defaults, for fields a config.json leaves out (transformers writes them all).
GPT2_DEFAULTS: dict[str, Any] = dict(
    vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
    activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, add_cross_attention=False,
    tie_word_embeddings=True,
)
LM_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
# Causal-mask buffers that older GPT-2 and nanoGPT files carry; not weights.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# Suffixes of nanoGPT tensors that are nn.Linear weights ([out, in]), stored transposed in HF.
TRANSPOSED = tuple(theirs for _, theirs, transpose in BLOCK_PARAMS if transpose)

StateDict = dict[str, torch.Tensor]


@dataclass
class SourceCheckpoint:
    """One checkpoint of the source, checked but not loaded."""

    label: str                          # how messages name it: its folder or file
    step: int | None                    # None: the source does not say (a lone folder or file)
    tokens: int | None                  # training tokens by this step, when the source records them
    config: SimpleNamespace             # GPT2Config attributes (model.interop.config_from_hf reads them)
    read: Callable[[], StateDict]       # the weights in HF layout (float32), loaded when called
    mtime: float                        # when the source wrote its weights
    notes: list[str] = field(default_factory=list)
    log_history: list[dict] = field(default_factory=list)  # HF trainer_state.json, when present

    def gpt_config(self) -> GPTConfig:
        """The workbench config: the source's, with the full GPT-2 vocabulary (see `read_model`)."""
        return config_from_hf(SimpleNamespace(**{**vars(self.config), "vocab_size": GPT2_VOCAB_SIZE}))


@dataclass
class Source:
    kind: str    # "hf" or "nanogpt"
    path: Path   # resolved

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_from(text: str) -> Source:
    kind, sep, rest = str(text).partition(":")
    if not sep or kind not in ("hf", "nanogpt") or not rest:
        raise BadInput(f"--from must be hf:DIR or nanogpt:PATH, got {text!r}.")
    return Source(kind, Path(rest).expanduser().resolve())


# -- shared checks -----------------------------------------------------------------------------
def layer_count(names) -> int:
    return len({m.group(1) for n in names if (m := re.match(r"transformer\.h\.(\d+)\.", n))})


def expected_shapes(config: SimpleNamespace, label: str, found: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes (HF layout) a GPT-2 with this config has, from our GPT built on the meta
    device (no memory), so the names and shapes come from the same table from_hf uses. The layer
    count is compared with the file's first: a config claiming a million layers is refused at once."""
    try:
        cfg = config_from_hf(config)
    except (ValueError, TypeError, AttributeError) as e:
        raise BadInput(f"{label}: {str(e).rstrip('.')}.") from None
    if layer_count(found) != cfg.n_layer:
        raise BadInput(f"{label} holds {layer_count(found)} layers of weights, but its config says n_layer "
                       f"{cfg.n_layer}.")
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}
    out = {"transformer.wte.weight": ours["wte.weight"], "transformer.wpe.weight": ours["wpe.weight"],
           "transformer.ln_f.weight": ours["ln_final.weight"], "transformer.ln_f.bias": ours["ln_final.bias"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    for layer in range(cfg.n_layer):
        for mine, theirs, transpose in BLOCK_PARAMS:
            shape = ours[f"blocks.{layer}.{mine}"]
            out[f"transformer.h.{layer}.{theirs}"] = shape[::-1] if transpose else shape
    return out


def check_shapes(label: str, config: SimpleNamespace, found: dict[str, tuple[int, ...]],
                 want: dict[str, tuple[int, ...]]) -> None:
    """BadInput naming the first tensor that is missing, unknown or of the wrong shape."""
    vocab = int(config.vocab_size)  # a positive integer: expected_shapes validated the config
    if vocab < GPT2_VOCAB_SIZE:
        raise BadInput(f"{label} has a vocabulary of {vocab} tokens, fewer than GPT-2's {GPT2_VOCAB_SIZE}; the "
                       "workbench reads text with the full GPT-2 BPE, so only models with vocab_size >= "
                       f"{GPT2_VOCAB_SIZE} can be imported.")
    for name, shape in want.items():
        if name not in found:
            raise BadInput(f"{label} lacks the tensor {name}, so it is not a complete GPT-2.")
        if tuple(found[name]) != shape:
            raise BadInput(f"{label}: tensor {name} has shape {tuple(found[name])}, but its config (n_layer "
                           f"{config.n_layer}, n_embd {config.n_embd}, vocab {vocab}, context {config.n_positions}) "
                           f"needs {shape}.")
    extra = sorted(set(found) - set(want) - {"lm_head.weight"})
    if extra:
        raise BadInput(f"{label} holds the tensor {extra[0]}, which is not part of a GPT-2 with its config.")


def canonical_name(key: str) -> str | None:
    """HF GPT-2 name of a tensor ("transformer." added for a bare GPT2Model), or None for a
    causal-mask buffer."""
    if key.endswith(BUFFER_SUFFIXES):
        return None
    if key.startswith(("transformer.", "lm_head.")):
        return key
    return f"transformer.{key}"


def torch_load(path: Path) -> Any:
    """torch.load with weights_only=True (memory-mapped when the file allows), every failure as
    one sentence; a pickle that would run code is named as such."""
    def load(mmap: bool) -> Any:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load(True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return load(False)  # the pre-1.6 (non-zip) format cannot be mapped
    except pickle.UnpicklingError as e:
        if runs_code(str(e)):
            raise BadInput(f"{path} holds Python objects that would run code when unpickled, so it is refused "
                           "(only tensors and plain data are loaded).") from None
        raise BadInput(f"{path} is not a readable PyTorch file (its pickle is not plain data).") from None
    except Exception as e:  # corrupt zip, truncated file, unknown format
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"{path} is not a readable PyTorch file ({first[:160]}).") from None


def runs_code(message: str) -> bool:
    """Whether torch's weights-only unpickler refused a pickle for naming a callable: a GLOBAL it
    does not allow, or the INST/OBJ opcodes (105, 111) that build objects by calling a class.
    Other refusals are garbage, not code."""
    return "GLOBAL" in message or any(f"Unsupported operand {op}" in message for op in (105, 111))


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"{path} is not readable JSON ({type(e).__name__}).") from None


# -- Hugging Face ------------------------------------------------------------------------------
def hf_checkpoints(root: Path) -> tuple[str, list[SourceCheckpoint]]:
    """A Trainer output folder (its checkpoint-N folders, step N from the name) or one
    save_pretrained folder."""
    if not root.is_dir():
        raise BadInput(f"hf:{root} is not a folder; pass a save_pretrained folder or a folder of Trainer "
                       "checkpoint-N folders.")
    subs = sorted((int(m.group(1)), p) for p in root.iterdir()
                  if p.is_dir() and (m := CHECKPOINT_DIR.match(p.name)))
    if subs:
        return "hf-trainer", [hf_checkpoint(p, step) for step, p in subs]
    if (root / "config.json").is_file():
        return "hf", [hf_checkpoint(root, None)]
    raise BadInput(f"{root} holds no checkpoints: neither a config.json (a save_pretrained folder) nor "
                   "checkpoint-N folders.")


def hf_config(folder: Path) -> SimpleNamespace:
    path = folder / "config.json"
    if not path.is_file():
        raise BadInput(f"{folder} has no config.json, so it is not a save_pretrained folder.")
    raw = read_json_file(path)
    if not isinstance(raw, dict):
        raise BadInput(f"{path} is not a JSON object.")
    kind = raw.get("model_type")
    if kind != "gpt2":
        raise BadInput(f"{folder} holds a {kind or 'model of unknown type'} model (config.json model_type "
                       f"{kind!r}), not a GPT-2; only GPT-2 checkpoints can be imported.")
    odd = [a for a in raw.get("architectures") or [] if a not in LM_ARCHITECTURES]
    if odd:
        raise BadInput(f"{folder} holds a {odd[0]}, not a GPT-2 language model ({' or '.join(LM_ARCHITECTURES)}).")
    return SimpleNamespace(**{**GPT2_DEFAULTS, **raw})


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a save_pretrained folder (safetensors preferred, shards via the index)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            data = read_json_file(folder / index)
            names = sorted(set((data.get("weight_map") or {}).values())) if isinstance(data, dict) else []
            if not names or any(not isinstance(n, str) or "/" in n or "\\" in n or n.startswith(".") for n in names):
                raise BadInput(f"{folder / index} does not list weight files inside {folder}.")
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise BadInput(f"{folder} lacks the weight shard {missing[0]} that {index} lists.")
            return [folder / n for n in names]
    raise BadInput(f"{folder} has a config.json but no weights (model.safetensors or pytorch_model.bin).")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise BadInput(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:160]}).") from None


def torch_state(path: Path) -> StateDict:
    obj = torch_load(path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInput(f"{path} is not a state dict of tensors.")
    return obj


def hf_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    found: dict[str, tuple[int, ...]] = {}
    for f in files:
        raw = safetensors_shapes(f) if f.suffix == ".safetensors" else {k: tuple(v.shape) for k, v in torch_state(f).items()}
        for key, shape in raw.items():
            name = canonical_name(key)
            if name is not None:
                found[name] = shape
    return found


def hf_reader(files: list[Path]) -> Callable[[], StateDict]:
    def read() -> StateDict:
        sd: StateDict = {}
        for f in files:
            raw = st_load_file(str(f)) if f.suffix == ".safetensors" else torch_state(f)
            for key, value in raw.items():
                name = canonical_name(key)
                if name is not None:
                    sd[name] = value.to(torch.float32)
        return sd
    return read


def trainer_state(folder: Path) -> dict:
    path = folder / "trainer_state.json"
    if not path.is_file():
        return {}
    data = read_json_file(path)
    return data if isinstance(data, dict) else {}


def hf_checkpoint(folder: Path, step: int | None) -> SourceCheckpoint:
    config = hf_config(folder)
    files = hf_weight_files(folder)
    label = str(folder)
    found = hf_shapes(files)
    check_shapes(label, config, found, expected_shapes(config, label, found))
    state = trainer_state(folder)
    if step is None:
        m = CHECKPOINT_DIR.match(folder.name)
        given = state.get("global_step")
        step = int(m.group(1)) if m else (given if isinstance(given, int) and given >= 0 else None)
    tokens = state.get("num_input_tokens_seen")
    # The Trainer writes 0 when it was not counting tokens: only step 0 can truly have seen none.
    known = isinstance(tokens, int) and not isinstance(tokens, bool) and (tokens > 0 or step == 0)
    history = state.get("log_history")
    return SourceCheckpoint(label=label, step=step, tokens=tokens if known else None, config=config,
                            read=hf_reader(files),
                            mtime=max(f.stat().st_mtime for f in files),
                            log_history=[r for r in history if isinstance(r, dict)] if isinstance(history, list) else [])


# -- nanoGPT -----------------------------------------------------------------------------------
