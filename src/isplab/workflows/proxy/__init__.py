"""Neural proxies of darktable's processing blocks (issue 9): the data layer.

:mod:`~isplab.workflows.proxy.blocks` (the block table), :mod:`~isplab.workflows.proxy.xmp`
(sidecars), :mod:`~isplab.workflows.proxy.darktable` and :mod:`~isplab.workflows.proxy.builtin`
(the two render backends), :mod:`~isplab.workflows.proxy.generate` (``isplab proxy generate``) and
:mod:`~isplab.workflows.proxy.dataset` (the dataset format and its loader; ``docs/proxy.md``).
"""
