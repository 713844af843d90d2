"""samples.jsonl: greedy and nucleus-sampled continuations of fixed prompts at every checkpoint, so
a run shows what its model writes as it learns. One owner for training and the importer."""
from __future__ import annotations

import contextlib

import torch

from model.device import torch_threads
from model.gpt import GPT
from model.tokenizer import Tokenizer

SAMPLE_PROMPTS = ("Once upon a time", "They wave to each other", "Lily and Tom went to the park.",
                  "The little rabbit was scared of the dark.")
SAMPLE_TOP_P = 0.9  # nucleus sampling for the "sampled" rows


def one_thread(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """One torch thread on a CPU for a block, the count restored after: token-by-token generation
    on a CPU is a stream of tiny ops; a second thread only adds synchronisation, and on a busy
    machine it makes them many times slower."""
    return torch_threads(1 if device.type == "cpu" else None)


def sample_rows(model: GPT, tokenizer: Tokenizer, step: int, n_tokens: int, seed: int) -> list[dict]:
    """The rows of one checkpoint: for each prompt a greedy and a sampled continuation of `n_tokens`
    (the sampled one seeded `seed` + the prompt's index, so samples differ between checkpoints only
    because the model did). All eight in one batch (`GPT.generate_each`): on the demo's 16
    checkpoints 12.4 s of training's time one row at a time."""
    decodings = [(prompt, decoding, temperature, s) for i, prompt in enumerate(SAMPLE_PROMPTS)
                 for decoding, temperature, s in (("greedy", 0.0, None), ("sampled", 1.0, seed + i))]
    with one_thread(model.device):
        new = model.generate_each([tokenizer.encode(d[0]) for d in decodings], n_tokens, [d[2] for d in decodings],
                                  top_p=SAMPLE_TOP_P, seeds=[d[3] for d in decodings])
    return [{"step": step, "prompt": prompt, "decoding": decoding, "text": tokenizer.decode(tokens.tolist())}
            for (prompt, decoding, _, _), tokens in zip(decodings, new)]
