"""What clipdesk does to a library over time: the folder watcher (``watch``) and the categories
that keep applying (``auto``). The journaled file operations (``journal``, ``tags``,
``organise``, ``duplicates``) join them here as they are next changed (DESIGN.md, round 3)."""
