"""What analyses a series of checkpoints: every rule and its thresholds (`probes.analyse.emergence_rules`),
the emergence of each phenomenon, the failure modes, overfitting, stages, the loss trajectory,
circuits over training, sibling runs parting, and `summary.json` that lines them up."""
