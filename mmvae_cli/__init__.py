"""mmvae: multimodal VAEs with energy-based priors.

A model is a composition: experts (per-modality encoders) x fusion (PoE, MoE,
MoPoE) x objective (ELBO, IWAE, DReG, MVAE sub-sampling) x prior (Gaussian,
Laplace, energy-based) x decoders (likelihoods).
"""

__version__ = "0.4.3"
