"""Foundations every layer may import: errors, atomic file writes, optional packages, hardware facts,
timers, the CLI option vocabulary and the precision names. Nothing here imports the rest of sathmr.
"""
