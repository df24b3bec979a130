"""Teaching from a few examples: the probe (``probe``) and its measurement (``evaluation``).
Zero-shot, sampling and relevance join them here as they are next changed (DESIGN.md, round 3)."""
