"""Evaluation building blocks: FID, latent probes, coherence and likelihood estimates."""
