"""benchmark_builder"""
