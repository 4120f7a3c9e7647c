"""Flower's deployment engine on this machine: credentials, processes, the federation, ``fleet deploy``."""
