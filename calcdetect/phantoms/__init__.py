"""Images with known truth: phantoms for tests and validation, and insertion of
calcifications of known size into real images.

Each generator returns ``(Image, truth)`` with ``truth`` a list of plain dicts
(``centroid_px`` in array index order, ``diameter_mm``, ...), deterministic for a seed.
"""
