"""Restoration: the ``Restorer`` (photo → restored photo, ``restorer``), bulk runs over storage (``bulk``, ``plan``,
``memory``) and their manifest (``manifest``)."""
