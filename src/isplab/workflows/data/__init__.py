"""The foundation's own demo section: synthetic raws through the classical differentiable ISP.

The ``isplab data`` commands themselves live in :mod:`isplab.cli` (they are thin wrappers of
:mod:`isplab.data` and :mod:`isplab.io`).
"""
