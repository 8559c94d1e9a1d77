"""`python -m cumo.bench <name>`: timing benchmarks, one plain function each, printed as a small table.

moe: forward + backward of the sorted `SparseMoeBlock` against CuMo's per-image, per-expert loop and
against the ideal (one dense MLP over the k copies of every token).

mixture: build and validate a synthetic sft mixture of CuMo's size into its Arrow form, in a fresh process;
then open it and read random rows in another, as a training rank would.

train-step: one sft optimiser step (forward with the aux losses, backward, AdamW) of the tiny model and of a
mid-size one (a CLIP-L-sized MoE tower, a small LLM) at batch 1 and 4: samples/s, tokens/s, achieved TFLOP/s
(MFU on a GPU), next to the same step of the dense model.

memory: every training stage of a scaled family of the paper's presets (CLIP-, Mistral- and Mixtral-like towers
saved as Hugging Face models) through `cumo launch` on 1 and 2 CPU ranks, one step each: peak host memory per
rank and phase (set-up, first step, checkpoint save, export) per parameter, next to the memory plan's
prediction (cumo/plan.py).

convert: `cumo convert from-released` on a released checkpoint of CuMo-7B's shapes (random bf16 weights, 5 GB
shards) in a fresh process: its peak resident memory against its largest shard + 2 GB.

generate: evaluation's greedy answers to GQA questions of the shapes world at batch size 1 and at larger
batches, the answers checked identical in the same run (a trained model with --model, else a random tiny one).
"""
