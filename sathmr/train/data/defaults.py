"""Defaults of the synthetic scenes that the CLI shows (no numpy, scipy or torch here; used by
:mod:`sathmr.train.data.synthetic` and :mod:`sathmr.train.data.poses`)."""

SPLITS = {"train": "train_6fps", "val": "validation_6fps"}   # --split → BEDLAM split name
LAYOUT_SPLITS = {"bedlam": SPLITS, "agora": {"train": "train", "val": "validation"}}   # --layout → its split names
HEIGHT_RANGE = (0.2, 0.9)   # apparent body height as a fraction of the long image side (log-uniform)
MAX_PEOPLE = 4
POSE_PRIOR_NAMES = ("families", "uniform")   # the keys of sathmr.train.data.poses.POSE_PRIORS
