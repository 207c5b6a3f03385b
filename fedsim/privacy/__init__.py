"""Differential privacy: accountants, the DP configuration, and the privacy report.

Why this package exists: every scenario with a ``privacy`` block gets an accounting of what it spends. The
mechanisms themselves (clipping, noise) are gradient-core transforms (``fedsim.gradcore.dp``); this package says
what they cost. It imports opacus' accountants, dp_accounting and torch, never flwr or ray.
"""

FULL_BATCH_STRATEGIES: tuple[str, ...] = ("diff2", "dp_gd")
"""Strategies whose privacy is a sequence of full-batch Gaussian mechanisms (``fedsim.privacy.plan.RoundSchedule``);
``strategies.diff2.DIFF2_NAMES`` is this tuple. Here, free of torch, so that planning a client-level scenario's
privacy can tell it is not one of them without importing the strategies."""
