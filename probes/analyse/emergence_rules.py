"""Every rule over a series of checkpoints, with its thresholds, in words: the emergence and
failure-mode rules (THRESHOLDS and RULES: summarize writes both into summary.json beside the
detections, so a reader never has to guess how a step was found; the detectors in
probes/analyse/phenomena.py, probes/analyse/failure_modes.py and probes/analyse/overfitting.py read their numbers from
THRESHOLDS, and `rules()` states each method with those numbers filled in), and the rules of loss
spikes, developmental stages, the loss trajectory and sibling runs parting, whose modules apply them.
"""
from __future__ import annotations

from probes.analyse.emergence import SMALL_SAMPLE
from probes.analyse.head_inequality import EQUAL_HEADS_DRAWS, EQUAL_HEADS_QUANTILE, EQUAL_HEADS_SEED

THRESHOLDS = {
    "repetition_seq_rep_4": 0.3,     # greedy seq-rep-4 at or above this = repetitive generations
    "learning_started_loss_drop": 0.1,  # learning has begun once held-out loss is 10% below step 0's
    "persist": 2,                    # ... for this many consecutive checkpoints
    "canary_extracted_fraction": 0.5,  # a canary group counts as extracted at or above this
    "induction_min_rise": 0.1,       # a phase change needs the best induction score's level to rise this much
    "concentration_min_rise": 0.1,   # head-importance concentration needs the Gini level to rise this much
    "rise_sustain_share": 0.75,      # ... and this share of the later checkpoints to keep half the rise
    "rise_noise_z": 6,               # ... and the rise to be this many noise levels (scaled to the split)
    "abrupt_max_intervals": 2,       # abrupt = the climb takes at most this many checkpoint intervals ...
    "abrupt_max_share": 0.25,        # ... or at most this share of the training steps up to its end
    "transition_band": 0.2,          # the climb runs from within this share of the rise of one level to the other
    "head_importance_min": 0.02,     # heads "matter" once the top head's zero-ablation loss increase is this (nats)
    # the excess rule (probes.analyse.emergence.excess_stretches) of the loss-generation mismatch and overfitting:
    "excess_window": 3,              # the reference: the lowest median of this many consecutive earlier checkpoints
    "excess_noise_z": 6,             # a checkpoint stands out when this many noise levels (x the widening) above it
    "excess_small_sample": SMALL_SAMPLE,  # ... widened by (1 + this / m^2), m = differences the noise rests on
    "excess_min_points": 8,          # fewer checkpoints give no answer
    "mismatch_min_tone": 0.02,       # the smallest worsening of tone that counts (bits of Jensen-Shannon divergence)
    "mismatch_min_seq_rep": 0.1,     # the smallest worsening of seq-rep-4 (above the held-out text's) that counts
    "measured_noise_z": 4,           # a measured noise (not read off the series): this many noise levels stand out
    "overfit_min_gap": 0.05,         # the smallest growth of the held-out minus training loss gap that counts (nats)
    "overfit_min_rise": 0.01,        # the smallest rise of the held-out loss after its minimum that counts (nats)
    "overfit_min_memorized": 0.05,   # the smallest rise of the memorized share of seen text that counts
    "overfit_train_fit": 20,         # metrics.jsonl fallback: training loss = a line through this many logged steps
    "collapse_loop_share": 0.5,      # greedy continuations loop when their loops take this share of them on average
    "equal_heads_quantile": EQUAL_HEADS_QUANTILE,  # the equal-heads bound on the Gini: this quantile ...
    "equal_heads_draws": EQUAL_HEADS_DRAWS,        # ... of this many simulated measurements (also the SE draws)
    "equal_heads_seed": EQUAL_HEADS_SEED,
    # circuits (probes/analyse/circuits.py): a handover needs a lead of at least this (score units) ...
    "handover_min_lead": 0.05,
    "handover_noise_z": 4,           # ... and of this many noise levels of the two heads' difference ...
    "handover_small_sample": 50,     # ... widened by (1 + this / m^2), m = the differences the noise rests on
    "handover_min_points": 6,        # fewer checkpoints from a role's appearance on give no handover
    "edge_min_rise": 0.02,           # the induction K-edge's score rise that counts (composition-score units)
    "edge_within_share": 0.15,       # the K-edge lines up with the induction change within this share of its step
}

RULES = {
    "repetition": (
        "Metric repetition.greedy.seq_rep_4 (mean over the fixed prompts). Emergence step = the first "
        "checkpoint, among those where learning has begun (held-out loss at least "
        "{learning_started_loss_drop:.0%} below the first checkpoint's), at which it is >= "
        "{repetition_seq_rep_4} and stays >= {repetition_seq_rep_4} for {persist} consecutive checkpoints "
        "(or until the last one). A random init echoes its last token, which is repetition too but not "
        "learned: present_at_init says whether the first checkpoint already repeats. rise_step is the "
        "first such crossing from below over all checkpoints; resolved_step the first checkpoint after "
        "the emergence step where it stays below the threshold for {persist} checkpoints."),
    "induction": (
        "Metric induction.induction.max (best head's diagonal induction score on repeated random "
        "tokens, each head's score the mean over the repeat periods induction.random_periods, taken "
        "outside the periods training planted repeats at; induction.induction_control beside it is the "
        "same attention on fresh tokens, high for a head that attends by position alone). Phase change = a rise of level, found as follows. Each split between two "
        "consecutive checkpoints (by index, so uneven spacing favours none) describes the series by "
        "two levels: the median of the values up to the split (before) and after it (after); rise = "
        "after - before. A split qualifies when rise >= {induction_min_rise}, the rise is sustained "
        "(at least {rise_sustain_share:.0%} of the checkpoints after the split are >= before + rise/2) "
        "and it is clear of noise (rise >= {rise_noise_z} x noise x sqrt(1/n_before + 1/n_after), "
        "noise = the mean absolute deviation of the successive differences from their median, the "
        "largest left out, x sqrt(pi)/2). detected when one qualifies; the qualifying split whose two "
        "levels fit the values best (least total absolute deviation; ties: the larger rise, then the "
        "larger change across the pair, then the earlier) is reported; otherwise the best-fitting "
        "rising split, with the reason it fails. from_step and step are the two checkpoints "
        "bracketing the change; before and after are the two levels; jump is the change across the "
        "pair and rate that per unit of log(1 + step), for reference only. kind is abrupt when the "
        "climb, from the last checkpoint within {transition_band:.0%} of the rise of the before level "
        "to the first within "
        "{transition_band:.0%} of the after level, takes at most {abrupt_max_intervals} checkpoint "
        "intervals or at most {abrupt_max_share:.0%} of the training steps up to its end (so "
        "checkpoints made dense around a change do not make it gradual) (transition_from_step, "
        "transition_to_step, transition_steps), gradual otherwise; a slow ramp whose "
        "levels differ by at least the minimum is detected and called gradual. note says when a "
        "level rests on one checkpoint (a jump at the last pair). The ICL score "
        "(induction.icl_score.value: mean held-out loss over late positions minus over early ones; "
        "each result names them in early_positions and late_positions, [start, end)) is given beside "
        "it as medians over the same checkpoints before and after, and so is the repeated-text gap "
        "(induction.repeated_text_loss.gap: held-out loss on a span's repeat minus on its first "
        "occurrence, the same tokens). The same rule is applied "
        "separately to the in-distribution copying score (induction.in_context_copying.max); the two "
        "are never merged."),
    "memorization": (
        "Metric memorization.canaries.copies_N.extracted_fraction (fraction of the canaries with N "
        "copies whose 32 greedy tokens after their prefix all match). Onset = the first checkpoint "
        "at which any group's fraction is >= {canary_extracted_fraction}; by_copies gives that "
        "first step per group."),
    "head_concentration": (
        "Metric head_ablation.gini.zero (Gini coefficient of the zero-ablation loss increases, "
        "negatives clipped to 0), over the checkpoints where heads matter at all (the top head's "
        "loss increase head_ablation.zero.max >= {head_importance_min} nats; below that the Gini of "
        "near-zero numbers is noise); heads_matter_step is the first of them. Among them, the rise "
        "of level found by the induction rule (two medians per split, sustained, clear of noise, "
        "best fit, abrupt or gradual), with a minimum rise of {concentration_min_rise}. The level itself, at every "
        "checkpoint with ablation results (level_steps): gini and top_share of head_ablation.zero with standard "
        "errors gini_se and top_share_se (parametric bootstrap over the measurement errors: {equal_heads_draws} "
        "draws each adding to every head's delta a Gaussian error of its own standard error "
        "head_ablation.delta_se.zero; the heads are fixed, their measured effects are not). The equal-heads bound "
        "equal_heads_gini: the {equal_heads_quantile:.1%} quantile of the Gini when every head has the same true "
        "effect (the mean of the measured deltas) and each is measured with its own standard error "
        "({equal_heads_draws} simulated measurements, seed {equal_heads_seed}); noise alone makes equal heads look "
        "unequal, the more so the smaller the effects are against their errors. exceeds (per checkpoint) says "
        "the Gini lies above its bound. exceeds_equal_heads_step = the first checkpoint where heads matter "
        "(as above) whose Gini is above its bound and stays above it at the next checkpoint ({persist} in a row; "
        "a crossing at the last checkpoint is not counted yet); exceeds_from_step is the checkpoint before it; "
        "unequal says whether there is one, exceeds_reason why not. last_* give the level at the last "
        "checkpoint."),
    "loss_generation_mismatch": (
        "Generation quality, measured apart from the loss on every checkpoint's own continuations of the fixed "
        "prompts (\"They wave to each other.\" among them), each measure oriented so that higher is worse "
        "(measure) and lying in [0, 1] (range): tone, |repetition.tone.jsd_unigram - "
        "repetition.tone.floor_unigram| (the Jensen-Shannon divergence in bits between the unigram distribution "
        "of the sampled continuations, top-p 0.9 at temperature 1, and that of held-out text, taken as its "
        "distance from the floor, what held-out text of the same size scores: a model that over-uses the "
        "commonest words scores below the floor, so the JSD alone is not worse when higher); and the sampled "
        "and greedy seq-rep-4 above the held-out text's own at the same length (max(0, "
        "repetition.*.seq_rep_4 - repetition.heldout_seq_rep_4)); results without these references give the "
        "raw values. Held-out loss "
        "(loss_metric): memorization.held_out.loss, else head_ablation.clean_loss, else metrics.jsonl val_loss "
        "at the checkpoint. Only checkpoints where learning has begun count (held-out loss at least "
        "{learning_started_loss_drop:.0%} below the first checkpoint's; learning_started_step): a random init's "
        "text is not a quality to fall from. Each measure's noise is measured at every checkpoint on the "
        "generations themselves, never read off the series: tone, the standard deviation of the tone of "
        "held-out samples of the same size (repetition.tone.floor_unigram_sd); sampled seq-rep-4, its standard "
        "error from the several samples of each prompt (repetition.sampled.seq_rep_4_se: sqrt(mean within-prompt "
        "variance / (prompts x samples)), the sampling noise at the fixed prompts); greedy seq-rep-4, its "
        "standard error across the prompts (repetition.greedy.seq_rep_4_se: sd / sqrt(prompts)). noise = the "
        "median of that over the checkpoints where learning has begun. threshold = max(the measure's minimum, "
        "{mismatch_min_tone} bits for tone and {mismatch_min_seq_rep} for seq-rep-4; {measured_noise_z} x noise x "
        "sqrt(1/{excess_window} + 1), the noise of one checkpoint minus a median of {excess_window}), capped at "
        "the width of the range (capped says so, and then nothing can be told from noise; on Gaussian noise of "
        "known size this z gives false detections in fewer than 1 of 10^4 series of up to 30 checkpoints). For "
        "each measure and checkpoint j, the reference is the lowest median of {excess_window} consecutive "
        "checkpoints before j (the best quality so far; ties: the latest). j is worse beyond noise when its "
        "value is at least reference + threshold and its held-out loss is below the median held-out loss of "
        "the reference window. A mismatch stretch is a run of at least {persist} consecutive such checkpoints "
        "(one cut short by the last checkpoint is not counted yet); results without the measured noise give "
        "no answer for that measure. detected when "
        "any measure has one; the earliest is reported (ties: in the order above): from_step and step bracket "
        "its start, to_step is its last checkpoint, reference_step the last checkpoint of the reference window, "
        "before the reference level and after the median over the stretch (rise = after - before), loss_before "
        "and loss_after the held-out loss there. stretches lists every stretch of every measure; by_metric "
        "gives each measure's range, noise (noise_metric, noise_source), threshold and reason."),
    "overfitting": (
        "Overfitting as practitioners mean it: the held-out loss stops following the training loss. Verbatim "
        "memorization is a finding of its own (memorization), never a condition. "
        "Onset (detected, step, from_step): the generalization gap (metric): memorization.loss_gap (held-out "
        "minus seen loss, the memorization probe's two sets of the same size, scored alike) where measured, else "
        "from metrics.jsonl: val_loss minus the training loss at the same step (a least-squares line through "
        "the last {overfit_train_fit} logged training losses, read at that step). For each checkpoint j the "
        "reference is the lowest median of {excess_window} consecutive checkpoints before j; j stands out when "
        "its gap exceeds it by threshold = max({overfit_min_gap} nats, {excess_noise_z} x noise x "
        "sqrt(1/{excess_window} + 1) x (1 + {excess_small_sample:g}/m^2)), noise = the gap's residual scatter "
        "measured on the series itself (the mean absolute deviation of its second differences x[i+1] - 2 x[i] "
        "+ x[i-1] from their median, the largest left out, x sqrt(pi/12): neither a trend nor a change of slope "
        "reads as noise), widened because with m second differences that estimate is itself uncertain (fewer "
        "than {excess_min_points} checkpoints give no answer). The onset is the first run of at least {persist} "
        "consecutive such checkpoints: from_step and step bracket it, to_step ends it, before and after are "
        "the gap's levels (reference and stretch), heldout_loss_* and train_loss_* the two losses there; "
        "gap_detected repeats detected. "
        "Early stopping (early_stop_step, early_stop_loss): the checkpoint of the lowest held-out loss "
        "(heldout_loss_metric: memorization.held_out.loss, else metrics.jsonl val_loss at the checkpoints, else "
        "head_ablation.clean_loss; ties: the earliest). heldout_rise: whether the held-out loss rises beyond noise "
        "after it: each later checkpoint's rise above the minimum against threshold = max({overfit_min_rise} "
        "nats, z x noise), noise measured as the paired standard error of that rise over the held-out rows "
        "(memorization.held_out.row_losses, the same rows at every checkpoint: sd of the per-row differences / "
        "sqrt(rows)) with z = {measured_noise_z}, else as the series' residual scatter (second differences as "
        "above, over the checkpoints from half the minimum's step on, x sqrt(2) for a difference of two "
        "checkpoints, widened likewise) with z = {excess_noise_z}. detected when the last checkpoint lies above "
        "the minimum by its threshold (a rise that came back is none): step is the first of the checkpoints, "
        "up to the last, that all do, from_step the one before it, to_step the last; rise, noise and threshold "
        "are the last checkpoint's; reason says why not. "
        "Memorization (memorization; the memorized_* keys repeat it): the memorized share of seen text "
        "(memorization.seen.memorized_fraction minus the held-out control "
        "memorization.held_out.memorized_fraction) rising by the onset's rule, minimum "
        "{overfit_min_memorized} (step, the memorized_step), beside the canaries' first extraction "
        "(canary_step, the memorization entry's onset)."),
    "entropy_collapse": (
        "Greedy continuations of the fixed prompts falling into loops, measured directly: for each continuation "
        "the longest repeated loop it ends in (probes.measure.metrics.longest_loop: the longest tail periodic with some "
        "period p that holds the pattern at least twice, length >= 2p; 0 when none), and "
        "repetition.greedy.loop_share, the mean over the prompts of that length / the continuation's length "
        "(metric). Beside it the mean next-token entropy along the greedy path "
        "(repetition.greedy.predictive_entropy, nats: the entropy of each distribution the greedy tokens were "
        "read from), which collapses as the model grows sure of its own loop. Loops begin (step) at the first "
        "checkpoint, among those where learning has begun (held-out loss at least "
        "{learning_started_loss_drop:.0%} below the first checkpoint's), at which loop_share is >= "
        "{collapse_loop_share} and stays there for {persist} consecutive checkpoints (or until the last one); "
        "from_step is the checkpoint before it. They end (resolved_step) at the first later checkpoint where it "
        "stays below for {persist} checkpoints. detected when loops begin; episodes lists every begin and end "
        "(loops can come back); present_at_init says whether the first checkpoint already loops (a random init "
        "echoing itself). entropy_before, entropy_during and entropy_after are the path entropy's medians over "
        "the learned checkpoints before, within and after the first episode; loop_length_at_step the mean "
        "longest loop there (repetition.greedy.loop_length, tokens)."),
    "circuits": (
        "Heads are named L{{layer}}H{{head}}. roles: each head role of head_roles (previous_token, duplicate_token, "
        "induction, sink, local, copying; their definitions are in each result's head_roles.definitions) appears "
        "by the induction rule (rules.induction) applied to the best head's score head_roles.ROLE.max, minimum rise "
        "{induction_min_rise}: step and from_step are the two checkpoints bracketing the change, head the best "
        "head at step (for induction the same change and head as the induction entry); role_rises gives every "
        "role's rise and, when it does not appear, the reason. handovers: after a role appears, the head holding "
        "it hands it over at checkpoint step (from_step the one before) when another head's score exceeds the "
        "holder's by more than a margin there and at the next {persist} - 1 checkpoints (a lead cut short by the "
        "last checkpoint does not count yet), margin = max({handover_min_lead}, {handover_noise_z} x noise x (1 + "
        "{handover_small_sample}/m^2)), noise = that of the difference of the two heads' series from the role's "
        "appearance on (the mean absolute deviation of its m successive differences from their median, the "
        "largest left out, x sqrt(pi)/2), widened because a noise level resting on few differences is too often "
        "far too small; fewer than {handover_min_points} checkpoints from the appearance on give no handover. "
        "Near-equal heads trade places within the margin and hand nothing over (4 x 4 equal heads with Gaussian "
        "noise, 2,000 series each: a false handover in 1% of series of 6 checkpoints, 0.35% of 8, 0.15% of 12, "
        "0.05% of 20, none of 40). When several heads qualify at one checkpoint, the one with the largest "
        "smallest lead takes over and then holds the role. edges: for each composition kind "
        "(q, k, v) and each pair of a head and a head of a later layer, the first checkpoint (step; from_step "
        "the one before) at which the score is at or above the threshold its result states "
        "for the pair (composition.baseline.threshold[kind]: a high quantile of the pair's score when what the "
        "later head reads is turned to a random orientation against what the earlier one writes, both heads' "
        "matrices otherwise kept) after being below it, and stays there for {persist} checkpoints; edges above "
        "it from the first checkpoint on never rise and are not listed. induction_k_edge: the K-composition edge "
        "from the best previous-token head of an earlier layer at the induction change to the induction head there, "
        "with the step it crosses its baseline and the largest sustained rise of its score by the induction "
        "rule (minimum rise {edge_min_rise}); each lines up when it lies within {edge_within_share:.0%} of the "
        "induction change's step of that step."),
}


def rules() -> dict[str, str]:
    return {k: v.format(**THRESHOLDS) for k, v in RULES.items()}


# -- the rules over other series, stated here too: loss spikes in a training log (probes/analyse/loss_spikes.py),
# developmental stages on the LLC series (probes/analyse/stages.py), the per-token loss trajectory
# (probes/analyse/trajectory.py) and when two sibling runs part (probes/analyse/run_pairs.py).
# Calibrated on the nano preset trained on stories with each attention kind (same data order): the
# hardest batches sit up to 76% above the median of the 20 losses before them, at the same steps in
# every run and with no jump in grad norm — the data, not the optimizer. A spike is therefore a
# loss more than double the recent median (the page lets one lower the line to look at those too).
SPIKE_RATIO = 1.0
SPIKE_WINDOW = 20


def spike_rule(ratio: float = SPIKE_RATIO, window: int = SPIKE_WINDOW) -> str:
    """The spike definition in words, as the page states it."""
    return (f"A loss spike is a logged train loss more than {ratio:.0%} above (over {1 + ratio:g}x) the median "
            f"of the {window} "
            f"logged train losses before it (rows with fewer than {window} before them are not judged); "
            "consecutive rows above that line count as one spike, placed at its first row.")


SPIKE_RULE = spike_rule()

STAGE_RULE = (
    "Series: llc.mean (the LLC estimate of each checkpoint, mean over SGLD chains), over the checkpoints "
    "that have one, in step order. Smoothed: each value replaced by the median of itself and its two "
    "neighbours (the ends keep theirs), so a single outlying checkpoint cannot make a boundary. Noise: the "
    "larger of the curvature noise of the raw series (the mean absolute deviation of its second differences "
    "from their median, the largest left out, x sqrt(pi/12); neither a trend nor a change of slope inflates "
    "it) and the median over checkpoints of the spread over chains (llc.std). Threshold h = max({min_share:.0%} "
    "of the median |LLC|, {noise_z:g} x noise x sqrt(2) x (1 + {small_sample:g}/m^2)), m the second differences "
    "the noise rests on (with few checkpoints the noise estimate is itself uncertain). A boundary is a turning "
    "point of the smoothed series, found by the zigzag rule: following the series, the running extreme of the "
    "current trend becomes a boundary once the series has moved back from it by at least h (a peak where "
    "rising turns to falling, a trough where falling turns to rising); the first trend is the first move of h. "
    "step is the checkpoint of the extreme (where the smoothing flattens an extreme into equal values, the one "
    "whose own estimate is the extreme), from_step and to_step the checkpoints on either side of it (the trend "
    "changes between them); value is its estimate, change_before and change_after the changes of the estimates "
    "into and out of it (from the previous boundary or the first checkpoint, to the next boundary or the last). trusted "
    "says whether the estimates at from_step, step and to_step all passed the llc probe's diagnostics. Fewer "
    "than {min_points} checkpoints with an LLC give no boundaries. Stages are the stretches between boundaries.")
MIN_SHARE, NOISE_Z, MIN_POINTS = 0.05, 6.0, 6
STAGE_RULE = STAGE_RULE.format(min_share=MIN_SHARE, noise_z=NOISE_Z, small_sample=SMALL_SAMPLE, min_points=MIN_POINTS)

TRAJECTORY_RULE = (
    "Per-token loss trajectory (Olsson et al. 2022): rows = checkpoints, columns = the losses of the "
    "same held-out target tokens (induction.token_losses, the first n_tokens of the fixed held-out "
    "sequences); each column is centred on its mean over checkpoints and the matrix is decomposed by "
    "SVD. pc1 and pc2 are each checkpoint's coordinates on the first two principal components, "
    "explained their shares of the total variance. Sign convention: each component is oriented so "
    "that its coordinate at the last checkpoint is >= its coordinate at the first (ties, within "
    "1e-9 of the component's scale: its first non-zero coordinate is positive). Checkpoints whose token count differs from the "
    "last checkpoint's are left out. turn: where the path turns most in the (pc1, pc2) plane: for each "
    "checkpoint k with {window} checkpoints on each side, the angle between its direction of travel "
    "before (p_k - p_(k-{window})) and after (p_(k+{window}) - p_k), counted only where both moves are at "
    "least {min_share:.0%} of the path's extent (the largest distance between two of its points), so "
    "late jitter in a path that has come to rest cannot win; turn_step is the checkpoint of the "
    "largest angle, angle_deg that angle.")
TURN_WINDOW, TURN_MIN_SHARE = 3, 0.05
TRAJECTORY_RULE = TRAJECTORY_RULE.format(window=TURN_WINDOW, min_share=TURN_MIN_SHARE)

PAIR_Z = 3.0            # a difference counts when it is this many standard errors ...
PAIR_PERSIST = 2        # ... at this many consecutive shared checkpoints
PAIR_MIN_TONE = 0.02    # bits: smaller tone differences are not a difference in the text
PAIR_MIN_LOSS = 0.01    # nats: smaller held-out loss differences are not worth a verdict

PAIR_RULE = (f"At each checkpoint both runs have probed: tone difference = |A - B| of repetition.tone.jsd_unigram, "
             f"its noise sqrt(sd_A^2 + sd_B^2) with sd = repetition.tone.floor_unigram_sd; held-out loss difference "
             f"= A - B of memorization.held_out.loss, its noise the paired standard error sd(row_A - row_B)/sqrt(n) over "
             f"memorization.held_out.row_losses. A measure parts at the first checkpoint where |difference| >= "
             f"max(minimum, {PAIR_Z:g} x noise) there and at the next {PAIR_PERSIST - 1} shared checkpoint(s) (a "
             f"crossing at the last checkpoint is not counted yet); minimum {PAIR_MIN_TONE} bits for tone, "
             f"{PAIR_MIN_LOSS} nats for the loss. from_step is the shared checkpoint before it. first says which "
             f"measure parted first ('same' when at the same checkpoint).")
