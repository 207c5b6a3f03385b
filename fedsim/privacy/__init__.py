"""Differential privacy: accountants, the DP configuration, and the privacy report.

Why this package exists: every scenario with a ``privacy`` block gets an accounting of what it spends. The
mechanisms themselves (clipping, noise) are gradient-core transforms (``fedsim.gradcore.dp``); this package says
what they cost. It imports opacus' accountants, dp_accounting and torch, never flwr or ray.
"""
