"""Looking inside headscope models: patching, head detectors, the logit lens, training-time probes."""
