"""training/methods"""
