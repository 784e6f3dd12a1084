"""Steps 2–4 of the data path: preprocessing, the batch runner (:class:`~sathmr.runtime.predictor.Predictor`),
the shared post-processing into :class:`~sathmr.runtime.postprocess.ImageResult`, and the reader/network/writer pipeline.
"""
