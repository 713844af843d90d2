"""Probes: measurements of one checkpoint (head ablation, attention entropy, memorization,
repetition, induction), the runner that fills a run's probes/ folder, and the summary across
checkpoints. Every probe uses only the hook interface, so it also runs on a TransformerLens model.
"""
from probes.measure.ablation import KINDS, ablate, head_ablation_sweep
from probes.measure.attribution import head_attribution
from probes.measure.compute import PROBES, compute_probes
from probes.measure.inputs import REPETITION_PROMPTS, ProbeInputs, ProbeSizes, heldout_tokens, probe_inputs
from store.runlayout import result_path

from probes.run.cli import main
from probes.measure.results import read_results
from probes.run.runner import run_probes, watch
from probes.analyse.summary import summarize, write_summary

__all__ = [
    "KINDS", "PROBES", "REPETITION_PROMPTS", "ProbeInputs", "ProbeSizes", "ablate", "compute_probes", "head_ablation_sweep",
    "head_attribution", "heldout_tokens", "main", "probe_inputs", "read_results", "result_path", "run_probes",
    "summarize", "watch", "write_summary",
]
