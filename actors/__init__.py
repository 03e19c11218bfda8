"""Ray actor wrappers and the training driver: resources, placement, forwarding, faults.

With ``launch/``, the only packages that import ``ray``.
"""
