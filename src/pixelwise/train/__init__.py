"""Training: the loop (:mod:`.loop`) and what it is built from (loaders, optimiser, schedule,
EMA, distributed processes, interrupts, logging, reports, checkpoints with train state)."""
