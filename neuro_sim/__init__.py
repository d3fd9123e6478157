"""neuro_sim."""
