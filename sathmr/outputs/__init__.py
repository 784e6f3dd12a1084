"""Step 5 of the data path: what a result becomes on disk (JSON, overlays, meshes, SMPL files,
animations), always written atomically.
"""
