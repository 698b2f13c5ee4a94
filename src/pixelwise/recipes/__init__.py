"""Applications built on the public API: audio separation (:mod:`.audio`), landmarks
(:mod:`.landmarks`) and box supervision (:mod:`.weak`)."""
