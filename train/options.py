"""The `python -m train` command line: its parser, the --config file, and which options a
command gave explicitly (train.args holds what the options are and how they are checked)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from model.cliargs import ArgumentParser, UsageError
from model.config import PRESETS, attention_kinds

from .args import FIELD_TYPES, KEEP_STATES, BadInput, TrainArgs, coerce


class Parser(ArgumentParser):
    """The workbench's argparse (model.cliargs), raising BadInput so the CLI handles every bad
    input the same way."""

    def error(self, message: str):  # type: ignore[override]
        try:
            super().error(message)
        except UsageError as e:
            raise BadInput(str(e)) from None


def build_parser() -> Parser:
    p = Parser(prog="python -m train", description="Train a GPT-2 and leave checkpoints along the way.",
               argument_default=None)
    d = TrainArgs()
    add = p.add_argument
    add("--preset", help=f"model preset: {', '.join(PRESETS)} (default {d.preset})")
    add("--data", help="stories | tinystories | text:PATH (default stories)")
    add("--out", help="run folder, e.g. runs/demo")
    add("--steps", type=int, help=f"optimizer steps (default {d.steps})")
    add("--batch-size", type=int, help=f"sequences per micro-batch per process (default {d.batch_size})")
    add("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    add("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    add("--warmup", type=int, help=f"warm-up steps (default {d.warmup})")
    add("--eval-every", type=int, help=f"held-out loss every N steps (default {d.eval_every})")
    add("--ckpt-every", type=int, help=f"checkpoint every N steps after warm-up (default {d.ckpt_every})")
    add("--ckpt-window", help="extra checkpoints at START, START+EVERY, ... <= END: START:END:EVERY, "
                              "comma-separated for several (default none)")
    add("--keep-states", choices=list(KEEP_STATES),
        help="training states kept for --resume and --fill-in: budget (default: the latest, then those inside "
             "--ckpt-windows, then others spread in log step, within --state-budget), all, or latest only")
    add("--state-budget", type=float, metavar="GB",
        help=f"disk for training states with --keep-states budget (default {d.state_budget:g} GB; the latest is "
             "always kept)")
    add("--fill-in", help="add checkpoints START:END:EVERY to the finished run in --out, retraining from its "
                          "kept state at or before START (comma-separated for several windows)")
    add("--seed", type=int, help=f"seed of data, canaries, init and batch order (default {d.seed})")
    add("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    add("--compile", action="store_const", const=True, help="torch.compile the model")
    add("--attention", help=f"attention kind: {', '.join(attention_kinds())} (default standard)")
    add("--attn-only", action="store_const", const=True,
        help="attention-only blocks: no MLP and no ln2 (Olsson et al. 2022)")
    add("--threads", type=int, help="CPU threads (default 0 = every core this process may use, for the whole run; "
                                    "a resumed run keeps its recorded count)")
    add("--config", help="a .toml or .yaml file of these options (underscored names)")
    add("--resume", action="store_const", const=True, help="continue the run in --out from its state/")
    add("--plan", action="store_const", const=True,
        help="train nothing: print the corpus's bigram repetition, the predicted induction-head formation point "
             "for this batch and context (Aoyama et al.) and how long it takes at this machine's speed")
    add("--n-layer", type=int, help="override the preset's layer count")
    add("--n-head", type=int, help="override the preset's head count")
    add("--n-embd", type=int, help="override the preset's width")
    add("--n-ctx", type=int, help="override the preset's context length")
    add("--dropout", type=float, help="dropout (default the preset's, 0)")
    add("--vocab-size", help="compact vocabulary size, or gpt2 (default: for nano a compact vocabulary holding every "
                             "token of the training text, gpt2 otherwise)")
    add("--corpus-mb", type=float, help=f"stories: training text size in MB; tinystories: cap (default {d.corpus_mb})")
    add("--val-fraction", type=float, help=f"held-out share of the corpus (default {d.val_fraction}; ignored with --val-data)")
    add("--val-data", metavar="text:PATH",
        help="held-out text from its own file or folder (recorded with its digest in data.json); default: a "
             "seeded --val-fraction of the training corpus")
    add("--max-docs", type=int, help="text:PATH: train on the first N documents only (default 0 = all)")
    add("--canary-copies", help=f"stories, text:PATH: copy counts of the canaries, none = no canaries (default {d.canary_copies})")
    add("--canaries-per-count", type=int, help=f"stories, text:PATH: canaries per copy count (default {d.canaries_per_count})")
    add("--copy-weight", type=float, help=f"stories: weight of the copy plots (default {d.copy_weight})")
    add("--burstiness", type=float,
        help="stories: chance in [0, 1] that each character and a story's object gets a made-up name of several "
             "tokens, new in every story and repeated within it (Chan et al. 2022; default 0)")
    add("--story-episodes", type=int,
        help="stories: plots per story, told with the same characters: longer stories (default 1)")
    add("--repeat-fraction", type=float,
        help="share of each micro-batch's rows that are planted repeats: a random span of the corpus's "
             "frequent tokens repeated back to back at a period drawn per row (default 0 = none; any --data)")
    add("--repeat-period", help=f"MIN:MAX period range of the planted repeats (default {d.repeat_period})")
    add("--repeat-pool", type=int, help=f"planted spans draw from this many most frequent training tokens "
                                        f"(default {d.repeat_pool})")
    add("--weight-decay", type=float, help=f"AdamW decay on 2-D weights (default {d.weight_decay})")
    add("--grad-clip", type=float, help=f"gradient norm clip, 0 = off (default {d.grad_clip})")
    add("--min-lr-ratio", type=float, help=f"final LR as a share of --lr (default {d.min_lr_ratio})")
    add("--beta2", type=float, help=f"AdamW beta2 (default {d.beta2})")
    add("--eval-batches", type=int, help=f"global batches of held-out sequences per evaluation (default {d.eval_batches})")
    add("--sample-tokens", type=int, help=f"tokens generated per sample at each checkpoint (default {d.sample_tokens})")
    return p


def read_config_file(path: str) -> dict[str, Any]:
    """Options from a TOML or YAML file, keys as TrainArgs field names (dashes allowed)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"config file {path} does not exist.")
    try:
        text = p.read_text()
        if p.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            raise BadInput(f"config file {path} must end in .toml, .yaml or .yml.")
    except BadInput:
        raise
    except Exception as e:  # tomllib/yaml parse errors, decoding errors
        raise BadInput(f"config file {path} cannot be parsed ({type(e).__name__}).") from None
    if not isinstance(data, dict):
        raise BadInput(f"config file {path} must hold a table of options.")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELD_TYPES:
            raise BadInput(f"config file {path} has unknown option {key!r}.")
        out[name] = value
    return out


def requested(argv: list[str]) -> tuple[dict[str, Any], bool, str | None]:
    """(options given explicitly on the command line or in --config, --resume flag, --fill-in
    windows or None)."""
    ns = vars(build_parser().parse_args(argv))
    resume = bool(ns.pop("resume"))
    ns.pop("plan")  # read by train.cli before anything else
    fill_in = ns.pop("fill_in")
    config = ns.pop("config")
    explicit = {k: coerce(k, v) for k, v in read_config_file(config).items()} if config else {}
    explicit.update({k: v for k, v in ns.items() if v is not None})
    if "vocab_size" in explicit:
        explicit["vocab_size"] = coerce("vocab_size", explicit["vocab_size"])
    if fill_in is not None and resume:
        raise BadInput("--fill-in and --resume cannot be combined: finish the run with --resume first, then fill in.")
    return explicit, resume, fill_in
