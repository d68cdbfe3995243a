"""Looking inside models: interventions, attention recording, heatmaps and the HTML viewer."""
