"""Weights in and out: converting released checkpoints (prefix remap, duplicate copies dropped), strict
loading with one readable error, and fetching released files from the hub (`hub`).
"""
