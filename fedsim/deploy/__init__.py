"""Deployment: the same ServerApp and ClientApp on Flower's Deployment Runtime (SuperLink, SuperNodes).

In deployment each SuperNode hosts exactly one logical client, the one whose partition its ``--node-config``
names. This package makes the TLS certificates and SuperNode keys (``pki``), builds the Flower command lines
(``commands``), owns the processes it starts (``processes``), and runs a scenario on a local or remote
SuperLink (``local``, ``submit``). See docs/deployment.md.
"""
