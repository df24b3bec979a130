"""Model-agnostic storage and indexing pipeline of clipdesk.

Folder scanning, robust image decoding, the SQLite catalog (the single source of
truth, vectors included), the FAISS vector store (a derived, rebuildable cache) and
the batched embedding pipeline, which takes an encode function and knows nothing
about CLIP. Nothing here imports the clipdesk core or Qt.
"""
