"""Step 1 of the data path: what an ``--input`` names (files, folder trees, globs, list files, videos,
webcams, streams) and how each unit is decoded, before any network work.
"""
