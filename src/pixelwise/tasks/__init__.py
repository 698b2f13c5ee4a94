"""What differs per task and nothing else: :mod:`.semantic` and :mod:`.instance`
(build the model, the loss of a step, evaluation, saved-model metadata)."""
