"""Video and streams after the network: tracking, smoothing, the overlay video, the tracks file, UDP.

Modules: ``tracker`` (stable ids), ``smoothing`` (One-Euro), ``sink`` (one video's outputs), ``mp4`` (the
overlay video file), ``udp`` (``--stream``), ``run`` (the video's events in the inference pipeline). Reading
frames is an input's business: :mod:`sathmr.inputs.video`.
"""
