"""SAT-HMR: real-time multi-person 3D human mesh estimation via scale-adaptive tokens."""

__version__ = "0.1.0"
