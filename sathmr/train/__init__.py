"""Training-side pieces of SAT-HMR: Hungarian matching, losses, denoising queries and evaluation metrics.

Kept import-light on purpose: import the submodule you need (``sathmr.train.losses`` etc.), so that
inference code never pays for scipy or the training helpers.
"""
