"""Looking inside models: interventions, attention recording, heatmaps, the HTML viewer, patching, head
detectors, the logit lens and training-time probes."""
