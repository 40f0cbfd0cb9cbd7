"""Shipping models to others: ``submit`` (the torch-free leaderboard container's entry
point, ``cxrkit-submit``, for grand-challenge, CodaLab and CXR-LT) and ``bundle`` (MONAI
Bundles)."""
