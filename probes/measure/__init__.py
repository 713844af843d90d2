"""What measures one checkpoint: each probe's module (head ablation and attribution, attention,
memorization, repetition, induction, head roles, composition, the LLC), the forward-pass helpers
and metric definitions they share, the inputs they read from a run, `compute_probes` that assembles
one checkpoint's result, and the result files (`probes.measure.results`)."""
