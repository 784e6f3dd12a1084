"""Video and streams: sources (files, webcams, URLs), tracking, smoothing, overlay video, tracks file, UDP.

Modules: ``source`` (frames of one unit), ``tracker`` (stable ids), ``smoothing`` (One-Euro), ``sink``
(one video's outputs), ``mp4`` (the overlay video file), ``udp`` (``--stream``), ``run`` (the video's
events in the inference pipeline). Nothing is imported here, so ``sathmr.io`` can use ``source``
without pulling in the rest.
"""
