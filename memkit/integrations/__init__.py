"""Bridges from memkit to other continual-learning libraries.

Each bridge is one module, imported by its full path so that memkit does not
need the other library installed: ``memkit.integrations.avalanche`` (the
``avalanche`` extra) puts memkit stores inside Avalanche strategies.
"""
