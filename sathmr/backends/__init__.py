"""Runtime backends: one interface, different engines for the same network.

Every backend takes the preprocessed batch and returns the network outputs named in
``sathmr.model.sathmr.NET_OUTPUTS``; pre- and post-processing are shared code around them.
"""

from sathmr.backends.base import Backend, load_backend

__all__ = ["Backend", "load_backend"]
