"""Shared basics every other part uses: atomic file writes (``io``), provenance (``env``),
the device resolver (``device``), model-name expansion (``names``), input shapes (``shapes``).
"""
