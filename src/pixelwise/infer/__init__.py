"""Inference below its faces (CLI, server, export): the runtime (normalise, model function),
sliding windows, test-time augmentation, :class:`~.segmenter.Segmenter`, batch prediction
(:mod:`.predict`) and instance prediction (:mod:`.instance`)."""
