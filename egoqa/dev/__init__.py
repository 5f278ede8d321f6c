"""Offline stand-ins for the real inputs: a synthetic Ego4D-format dataset with rendered clips,
a tiny random Qwen2.5-VL, and an OpenAI-compatible server (`egoqa dev serve`).

May import any stage but `cli`.
"""
