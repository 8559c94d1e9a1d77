"""A model's weights to and from disk one tensor at a time, so that no process ever holds a whole model.

- `Checkpoint`: the tensors of a saved model directory (safetensors, one file or shards with their index;
  or PyTorch `.bin`, as CLIP's Hub repo has), each read when asked for. Safetensors are read with plain
  reads into the tensor, not memory-mapped: a mapping counts every page it touched in the process's memory
  until it is closed (measured: reading a 1 GB file tensor by tensor through `safe_open` grew the process
  by 1 GB), a read only the tensor.
- `load_weights(model, recipe)`: fills every parameter and persistent buffer of a model built without
  weights (`build_empty`), module by module, from what `recipe(name, shape)` says it is: a `Read` of
  checkpoint tensors (combined, e.g. experts stacked) or an `Init` drawn fresh.
- `save_sharded(model, directory)`: the model's state dict as safetensors shards of at most
  `max_shard_bytes` with transformers' index (`model.safetensors.index.json`), written module by module.
- `save_from_recipe(model, recipe, directory)`: the files `save_sharded` would write after `load_weights`,
  without ever holding the model: names, shapes and dtypes from the model on the meta device (`build_meta`),
  each tensor made by its recipe and written in turn, renamed and split on the way where a `layout` says (a
  conversion between checkpoint layouts, `cumo/model/convert.py`). Holds one shard and the tensor being made.

Under DeepSpeed ZeRO-3 a `Partitioning` says how: the model is built inside `zero.Init` (each parameter split
over the ranks as soon as its module exists), and each module's parameters are gathered whole for the moment
they are filled or written (`zero.GatheredParameters`), with only the writer rank (0) reading the checkpoint.
This is transformers' own recipe for ZeRO-3 (`modeling_utils._from_config`, `integrations/deepspeed.py`
`_load_state_dict_into_zero3_model`), kept here so that the recipes below can read several layouts. The
model code stays single-device: the trainer hands DeepSpeed's contexts in.
"""

import json
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm
from transformers.initialization import no_init_weights

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration

SAFETENSORS_INDEX = "model.safetensors.index.json"  # transformers' name (utils/__init__.py)
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointError(ValueError):
    """A checkpoint directory that does not hold what the model needs."""


# --- reading ---------------------------------------------------------------------------------------------


class Checkpoint:
    """The tensors of one saved model directory, read one at a time; remembers which were read."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._where: dict[str, tuple] = {}  # key -> (file, dtype, shape, start, end) or (file,) for .bin
        self._bins: dict[Path, dict] = {}
        self.read_keys: set[str] = set()
        index = self.directory / SAFETENSORS_INDEX
        if index.is_file():
            files = sorted(
                {self.directory / name for name in json.loads(index.read_text())["weight_map"].values()}
            )
        else:
            files = sorted(self.directory.glob("*.safetensors")) or sorted(
                self.directory.glob("pytorch_model*.bin")
            )
        if not files:
            raise CheckpointError(
                f"{self.directory}: no model.safetensors, {SAFETENSORS_INDEX} or pytorch_model*.bin: not a saved "
                "model directory (a finished stage's output, or a model downloaded with `cumo download`)"
            )
        for file in files:
            if file.suffix == ".safetensors":
                self._where |= _safetensors_entries(file)
            else:
                # Pickled state dicts cannot be read one tensor at a time; mapped, only the tensors used are paged in.
                self._bins[file] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
                self._where |= {key: (file,) for key in self._bins[file]}

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def keys(self) -> set[str]:
        return set(self._where)

    def read(self, key: str) -> torch.Tensor:
        if key not in self._where:
            raise CheckpointError(f"{self.directory} has no tensor {key!r}")
        self.read_keys.add(key)
        entry = self._where[key]
        if len(entry) == 1:
            return self._bins[entry[0]][key].clone()
        file, dtype, shape, start, end = entry
        tensor = torch.empty(shape, dtype=dtype)
        with open(file, "rb") as handle:
            handle.seek(start)
            read = handle.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
        if read != end - start:
            raise CheckpointError(
                f"{file}: {key} is cut short ({read} of {end - start} bytes): download it again"
            )
        return tensor

    def close(self) -> None:
        """Unmap the `.bin` files (their touched pages count in the process's memory while mapped)."""
        self._bins.clear()

    def unread(self, ignore: tuple[str, ...] = ()) -> list[str]:
        """Keys never read, except those starting with one of `ignore`."""
        return sorted(key for key in self._where.keys() - self.read_keys if not key.startswith(ignore))


class InMemory(Checkpoint):
    """A state dict in memory, read like a checkpoint (`name` stands for its directory in messages)."""

    def __init__(self, tensors: dict[str, torch.Tensor], name: str):
        self.directory, self._tensors, self.read_keys = Path(name), tensors, set()
        self._where = dict.fromkeys(tensors)

    def read(self, key: str) -> torch.Tensor:
        if key not in self._tensors:
            raise CheckpointError(f"{self.directory} has no tensor {key!r}")
        self.read_keys.add(key)
        return self._tensors[key]


def _safetensors_entries(file: Path) -> dict[str, tuple]:
    """key -> (file, dtype, shape, start byte, end byte) from a safetensors header (the format: an 8-byte
    little-endian header length, the JSON header, then the data; https://github.com/huggingface/safetensors)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{file}: {key} has dtype {info['dtype']}, which cumo does not read")
        begin, end = info["data_offsets"]
        entries[key] = (
            file,
            SAFETENSORS_DTYPES[info["dtype"]],
            info["shape"],
            8 + length + begin,
            8 + length + end,
        )
    return entries


@dataclass(frozen=True)
class Read:
    """A tensor made of checkpoint tensors: `combine` of `keys` read from `checkpoint` (by default the one)."""

    checkpoint: Checkpoint
    keys: tuple[str, ...]
    combine: Callable[[list[torch.Tensor]], torch.Tensor] = lambda tensors: tensors[0]

    def value(self) -> torch.Tensor:
        return self.combine([self.checkpoint.read(key) for key in self.keys])


@dataclass(frozen=True)
class Init:
    """A tensor drawn fresh by `fill(tensor)` (in place), e.g. a router that no checkpoint has."""

    fill: Callable[[torch.Tensor], object]


Recipe = Callable[[str, torch.Size], Read | Init]


# --- partitioning ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partitioning:
    """How parameters are split over ranks while a model is built, filled and written.

    `contexts()`: what the model is built under (DeepSpeed's `zero.Init`); `gather(params, modify)`: the
    parameters whole on every rank inside the block, and with `modify` the writer's values kept afterwards;
    `writer`: whether this rank reads the checkpoint and writes files (rank 0). Without ZeRO-3 every rank
    holds whole parameters, reads and (rank 0) writes.
    """

    contexts: Callable[[], list[ContextManager]] = list
    gather: Callable[[list[torch.nn.Parameter], bool], ContextManager] = lambda params, modify: nullcontext()
    writer: bool = True
    partitioned: bool = False

    def numel(self, tensor: torch.Tensor) -> int:
        """The whole tensor's size, also of a ZeRO-3 parameter whose data is this rank's partition."""
        return getattr(tensor, "ds_numel", tensor.numel())


WHOLE = Partitioning()


def build_empty(config: CumoConfig, dtype: torch.dtype, partitioning: Partitioning = WHOLE, initialise=False):
    """The model of `config` in `dtype`, built under `partitioning`; its weights uninitialised (to be filled
    by `load_weights`) unless `initialise` (a random start). Non-persistent buffers (RoPE frequencies,
    position ids) are computed as always."""
    with ExitStack() as stack:
        if not initialise:
            stack.enter_context(no_init_weights())
            # Weights to be filled must not draw from the random streams either (CLIP's class embedding is made
            # with torch.randn): the fresh draws that follow (routers) stay those of the seed.
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            stack.enter_context(torch.random.fork_rng(devices=devices))
        for context in partitioning.contexts():
            stack.enter_context(context)
        return CumoForConditionalGeneration._from_config(config, dtype=dtype)


def build_meta(config: CumoConfig, dtype: torch.dtype):
    """The model of `config` in `dtype` on the meta device: its tensors' names, shapes and dtypes, no memory
    (what `save_from_recipe` writes from)."""
    with torch.device("meta"):
        return build_empty(config, dtype)


def _own_tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(local name, tensor, is a parameter) of the module's own parameters and persistent buffers."""
    for name, parameter in module._parameters.items():
        if parameter is not None:
            yield name, parameter, True
    for name, buffer in module._buffers.items():
        if buffer is not None and name not in module._non_persistent_buffers_set:
            yield name, buffer, False


def load_weights(
    model: torch.nn.Module, recipe: Recipe, partitioning: Partitioning = WHOLE, description: str = "load"
) -> None:
    """Fill the model's parameters and persistent buffers, one module at a time, from `recipe`.

    Every rank walks the same modules (the gathers are collective). `Init` tensors are drawn on every rank, so
    the ranks' random generators stay in step (and only the writer's draw is kept under ZeRO-3); `Read`
    tensors are read by the writer only, except buffers, which ZeRO-3 does not partition.
    """
    total = sum(1 for module in model.modules() for _ in _own_tensors(module))
    with (
        torch.no_grad(),
        tqdm(total=total, desc=description, unit="tensor", disable=not partitioning.writer) as bar,
    ):
        for prefix, module in model.named_modules():
            own = list(_own_tensors(module))
            if not own:
                continue
            with partitioning.gather([t for _, t, is_parameter in own if is_parameter], True):
                for name, tensor, is_parameter in own:
                    full_name = _full_name(prefix, name)
                    source = recipe(full_name, tensor.shape)
                    if isinstance(source, Init):
                        source.fill(tensor)
                    elif partitioning.writer or not partitioning.partitioned or not is_parameter:
                        tensor.copy_(_checked_value(source, full_name, tensor.shape))
                    bar.update()


def _checked_value(source: Read, name: str, shape: torch.Size) -> torch.Tensor:
    """`source`'s tensor, which must have the model's `shape` for `name`."""
    value = source.value()
    if value.shape != shape:
        raise CheckpointError(
            f"{source.checkpoint.directory}: {', '.join(source.keys)} gives {name} the shape "
            f"{tuple(value.shape)}, but the model's is {tuple(shape)}: the checkpoint is "
            "not of this model's architecture (its config.json or the preset)"
        )
    return value


# --- writing ---------------------------------------------------------------------------------------------


@dataclass
class _Shard:
    names: list[str] = field(default_factory=list)
    nbytes: int = 0


def _plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[_Shard]:
    """Tensors in order into shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own),
    as transformers' `save_pretrained(max_shard_size=...)` fills them."""
    shards = [_Shard()]
    for name, nbytes in sizes:
        if shards[-1].names and shards[-1].nbytes + nbytes > max_shard_bytes:
            shards.append(_Shard())
        shards[-1].names.append(name)
        shards[-1].nbytes += nbytes
    return shards


def save_sharded(
    model: torch.nn.Module,
    directory: str | Path,
    max_shard_bytes: int = 5 * 10**9,
    partitioning: Partitioning = WHOLE,
    description: str = "export",
) -> list[str]:
    """Write the model's state dict (persistent tensors, under their own names) as safetensors shards.

    One file `model.safetensors` when it fits in one shard, else `model-0000i-of-0000n.safetensors` with
    `model.safetensors.index.json`, the layout `from_pretrained` reads. The writer holds at most one shard and
    one gathered module. Returns the files written (on the writer; [] elsewhere). Collective under ZeRO-3.
    """
    modules = [(prefix, list(_own_tensors(module))) for prefix, module in model.named_modules()]
    sizes = [
        (_full_name(prefix, name), partitioning.numel(tensor) * tensor.element_size())
        for prefix, own in modules
        for name, tensor, _ in own
    ]

    def gathered():
        for prefix, own in modules:
            if not own:
                continue
            with partitioning.gather([t for _, t, is_parameter in own if is_parameter], False):
                for name, tensor, _ in own:
                    # The writer's copy, taken while the module is gathered; the other ranks only walk along.
                    copy = partitioning.writer
                    yield _full_name(prefix, name), tensor.detach().to("cpu", copy=True) if copy else tensor

    return write_sharded(directory, sizes, gathered(), max_shard_bytes, partitioning.writer, description)


def save_from_recipe(
    model: torch.nn.Module,
    recipe: Recipe,
    directory: str | Path,
    max_shard_bytes: int = 5 * 10**9,
    layout: Callable[[str, torch.Tensor], dict[str, torch.Tensor]] = lambda name, tensor: {name: tensor},
    description: str = "write",
) -> list[str]:
    """The files of `model` filled by `recipe`, written without ever filling it: `model` only gives the names,
    shapes and dtypes (build it on the meta device, `build_meta`), and each tensor is made in turn (read and
    checked as `load_weights` reads it, or drawn), cast to the model's dtype and written under the names
    `layout(name, tensor)` gives it (its own by default; a conversion renames and splits), in shards as
    `save_sharded` writes them. Holds at most one shard and the tensor being made, never the model."""
    own = [
        (_full_name(prefix, name), tensor)
        for prefix, module in model.named_modules()
        for name, tensor, _ in _own_tensors(module)
    ]
    sizes = [
        (key, part.numel() * part.element_size())
        for name, tensor in own
        for key, part in layout(name, tensor).items()
    ]

    def made():
        for name, tensor in own:
            source = recipe(name, tensor.shape)
            if isinstance(source, Init):
                value = torch.empty(tensor.shape, dtype=tensor.dtype)
                source.fill(value)
            else:
                value = _checked_value(source, name, tensor.shape).to(tensor.dtype)
            yield from layout(name, value).items()

    with torch.no_grad():
        return write_sharded(directory, sizes, made(), max_shard_bytes, description=description)


def write_sharded(
    directory: str | Path,
    sizes: list[tuple[str, int]],
    tensors: Iterator[tuple[str, torch.Tensor]],
    max_shard_bytes: int,
    writer: bool = True,
    description: str = "write",
) -> list[str]:
    """Write `tensors`, which come in the order of `sizes` (name, bytes) that plans their shards, as safetensors
    shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own) with transformers' index,
    each shard written as soon as its last tensor arrives. Not the `writer`: only walks `tensors`."""
    directory = Path(directory)
    shards = _plan_shards(sizes, max_shard_bytes)
    count = len(shards)
    file_of = {}
    for i, shard in enumerate(shards, start=1):
        for name in shard.names:
            file_of[name] = "model.safetensors" if count == 1 else f"model-{i:05d}-of-{count:05d}.safetensors"
    last_of_shard = {shard.names[-1]: file_of[shard.names[-1]] for shard in shards}
    expected = iter(sizes)

    if writer:
        directory.mkdir(parents=True, exist_ok=True)
    pending: dict[str, torch.Tensor] = {}
    with tqdm(total=len(sizes), desc=description, unit="tensor", disable=not writer) as bar:
        for key, tensor in tensors:
            if writer:
                name, nbytes = next(expected, (None, None))
                if (key, tensor.numel() * tensor.element_size()) != (name, nbytes):
                    # The index and the shards' sizes were planned from `sizes`: a tensor out of plan would break them.
                    raise ValueError(
                        f"{key} ({tensor.numel() * tensor.element_size()} bytes) came where the plan has {name} ({nbytes} bytes)"
                    )
                pending[key] = tensor.contiguous()
                if key in last_of_shard:
                    save_file(pending, directory / last_of_shard[key], metadata={"format": "pt"})
                    pending.clear()
            bar.update()
    if not writer:
        return []
    if pending or next(expected, None) is not None:
        raise ValueError(f"{directory}: fewer tensors came than the {len(sizes)} planned")
    if count > 1:
        index = {"metadata": {"total_size": sum(nbytes for _, nbytes in sizes)}, "weight_map": file_of}
        (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return sorted({*file_of.values(), SAFETENSORS_INDEX})
    return ["model.safetensors"]


def _full_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- layouts ---------------------------------------------------------------------------------------------

_MIXTRAL_EXPERTS = re.compile(r"(layers\.\d+\.)mlp\.(gate\.weight|experts\.gate_up_proj|experts\.down_proj)")


def llm_tensor(checkpoint: Checkpoint, prefix: str, suffix: str) -> Read:
    """Our language model's tensor `suffix` (transformers 5's names) from a checkpoint whose LLM keys start
    with `prefix`: under the same name, or, for Mixtral's experts, in the per-expert layout of the Hub's files
    (and of transformers 5's `save_pretrained`), fused as transformers' conversion mapping does on load
    (conversion_mapping.py, "mixtral": `MergeModulelist(dim=0)` of w1 and of w3, then `Concatenate(dim=1)`)."""
    key = prefix + suffix
    match = _MIXTRAL_EXPERTS.fullmatch(suffix)
    if key in checkpoint or match is None:
        return Read(checkpoint, (key,))
    layer = f"{prefix}{match[1]}block_sparse_moe."
    if match[2] == "gate.weight":
        return Read(checkpoint, (layer + "gate.weight",))
    experts = 0
    while f"{layer}experts.{experts}.w2.weight" in checkpoint:
        experts += 1
    if experts == 0:
        return Read(checkpoint, (key,))  # neither layout: the read names what is missing

    def keys(w):
        return tuple(f"{layer}experts.{e}.{w}.weight" for e in range(experts))

    if match[2] == "experts.down_proj":
        return Read(checkpoint, keys("w2"), torch.stack)  # (E, H, I)
    return Read(  # (E, 2I, H): the gate projections of every expert, then the up projections
        checkpoint,
        keys("w1") + keys("w3"),
        lambda tensors: torch.cat([torch.stack(tensors[:experts]), torch.stack(tensors[experts:])], dim=1),
    )


def resize_rows(read: Read, rows: int) -> Read:
    """`read` cut to its first `rows` rows, or with rows appended up to `rows`, each the mean of the rows read:
    the embedding of a token added to the vocabulary, as transformers' `resize_token_embeddings` starts it
    (mean_resizing, whose sample from N(mean, 1e-9 * covariance) is the mean to within 1e-9 of the rows'
    spread)."""

    def combine(tensors):
        old = read.combine(tensors)
        extra = rows - old.shape[0]
        if extra <= 0:
            return old[:rows]
        return torch.cat([old, old.float().mean(0, keepdim=True).to(old.dtype).expand(extra, -1)])

    return Read(read.checkpoint, read.keys, combine)


_LLM = "model.language_model."


def saved_model(checkpoint: Checkpoint) -> Recipe:
    """Every tensor under its own name: a saved CuMo model of the same architecture (a previous stage's
    export; Mixtral experts in either layout)."""

    def recipe(name: str, shape: torch.Size) -> Read:
        if name.startswith(_LLM):
            return llm_tensor(checkpoint, _LLM, name.removeprefix(_LLM))
        return Read(checkpoint, (name,))

    return recipe
