"""cumo: CuMo (Li et al., NeurIPS 2024), co-upcycled MoE multimodal LLM, reproduced end to end.

Kept free of imports so that light processes (a mixture reader, a downloader) do not load torch and
transformers; `import cumo.model` registers the model with transformers' Auto classes.
"""
