"""Component dictionaries: the format, and how they are built.

Build order: ``collection`` (photos → faces & landmarks tables) → ``selection`` (pose/expression-balanced subset)
→ ``extract`` (aligned faces → ``crops`` of VGG features → ``store``, Parquet per (scale, part)) → ``kmeans``
(one dictionary per (scale, part)) → ``format`` (``ComponentDictionary``, the artifact the generator reads).
"""
from dfdcore.dictionary.format import ComponentDictionary, DictionaryError

__all__ = ["ComponentDictionary", "DictionaryError"]
