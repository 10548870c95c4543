"""A loaded model with its tokenizer and image transform: what every consumer (eval, search) needs.

``load_bundle(dir)`` accepts a directory written by ``openalign train`` or the
``kakaobrain/align-base`` layout (config.json, weights, tokenizer files, preprocessor_config.json),
honouring its preprocessing.

Precision is chosen per tower (``image_precision``, ``text_precision``), because the towers differ
on a CPU (measured in ``bench/embed_throughput.py`` and ``bench/query_latency.py``, numbers in
``docs/benchmarks.md``):

- image tower: ``"fp32"`` or ``"bf16"`` (autocast; pays where the CPU has bf16 matmul units).
  Channels-last memory format is on by default: same numbers (to ~1e-7), about 2x faster on CPU.
- text tower: ``"fp32"``, ``"bf16"`` (a bf16 copy of the weights: a short query is bound by
  reading the weights, so half the bytes is about half the time) or ``"int8"`` (dynamic
  quantisation of BERT's linear layers, a quarter of the bytes).
- ``"auto"`` picks the fast setting measured safe on this kind of machine (``bench/precision_recall.py``
  checks held-out R@1 of a trained model in every precision against fp32):
  text tower on a CPU: int8 where its linear layers are large enough that a query is bound by
  reading their weights (BERT-base: 85M weights; query 3.4x faster than fp32 and 1.5x faster than
  bf16 here), fp32 for small towers (the ``tiny`` preset's 2-layer BERT: fp32 is fastest);
  image tower on a CPU with native bf16 (AVX512-BF16/AMX): bf16 autocast (about 2x on ``b3-mini``),
  else fp32. On a GPU ``auto`` is fp32 (use ``bf16=True``, autocast of both towers).

The default stays ``"fp32"``: exact agreement with plain ``transformers.AlignModel`` is part of the
model contract (``tests/test_interop.py``); ``encode_texts``/``encode_pixels`` take ``precision=``
to switch per call, so fp32 results stay available from a fast bundle.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from openalign.models.dual_encoder import DualEncoder
from openalign.models.preprocess import ImageTransform, transform_from_processor_config
from openalign.models.tokenizer import MAX_TEXT_LEN, load_tokenizer, tokenize

IMAGE_PRECISIONS = ("fp32", "bf16")
TEXT_PRECISIONS = ("fp32", "bf16", "int8")


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls/convs natively (AVX512-BF16 or AMX), i.e. where bf16 is fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# auto text precision: int8 from this many weights in the text tower's linear layers (BERT-base
# has 85M, the tiny preset 0.4M). Below it a query is bound by Python and kernel overheads, not by
# reading weights, and fp32 is the fastest (tiny: fp32 2.1 ms, int8 2.5 ms, bf16 3.0 ms per query).
INT8_TEXT_MIN_WEIGHTS = 8_000_000


def int8_available() -> bool:
    """True where torch has a quantised CPU engine (fbgemm/x86 on x86, qnnpack on ARM)."""
    return any(e != "none" for e in torch.backends.quantized.supported_engines)


def text_linear_weights(model: torch.nn.Module) -> int:
    """Number of weights in the linear layers of ``model``'s text tower (what int8 shrinks)."""
    text = getattr(getattr(model, "align", None), "text_model", model)
    if not isinstance(text, torch.nn.Module):
        return 0
    return sum(m.weight.numel() for m in text.modules() if isinstance(m, torch.nn.Linear))


def resolve_precision(precision: str, tower: str, device: str = "cpu", text_weights: int | None = None) -> str:
    """``"auto"`` -> the measured-safe fast setting for ``tower`` ("image"/"text") on ``device``
    (``text_weights``: :func:`text_linear_weights` of the model; unknown = large)."""
    allowed = IMAGE_PRECISIONS if tower == "image" else TEXT_PRECISIONS
    if precision == "auto":
        if torch.device(device).type != "cpu":
            return "fp32"  # GPUs: bf16=True (autocast of both towers)
        if tower == "text":
            large = text_weights is None or text_weights >= INT8_TEXT_MIN_WEIGHTS
            return "int8" if large and int8_available() else "fp32"
        # CPUs without native bf16 emulate it (slower than fp32)
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in allowed:
        raise ValueError(f"{tower} precision {precision!r}: expected one of {', '.join(allowed)} or 'auto'")
    return precision


class TextPath(torch.nn.Module):
    """The text tower alone ([CLS] -> projection -> L2 norm), in its own copy for a reduced precision."""

    def __init__(self, text_model: torch.nn.Module, projection: torch.nn.Module) -> None:
        super().__init__()
        self.text_model = text_model
        self.projection = projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.projection(hidden[:, 0, :]).float(), dim=-1)


# single queries are padded to one of these lengths, so a compiled text tower compiles a few shapes only
QUERY_BUCKETS = (16, 32, 64)


def build_text_path(model: DualEncoder, precision: str) -> TextPath:
    """A copy of ``model``'s text tower in ``precision`` (fp32, "bf16" weights or "int8" dynamic quantisation)."""
    path = TextPath(copy.deepcopy(model.align.text_model), copy.deepcopy(model.align.text_projection)).eval()
    if precision == "fp32":
        return path
    if precision == "bf16":
        return path.to(torch.bfloat16)
    if precision == "int8":
        with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated, still the fastest here
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(path, {torch.nn.Linear}, dtype=torch.qint8)
    raise ValueError(f"no reduced text path for precision {precision!r}")


@dataclass
class ModelBundle:
    model: DualEncoder
    tokenizer: Any
    transform: ImageTransform  # eval transform (centre crop)
    name: str = ""
    device: str = "cpu"
    max_text_len: int = MAX_TEXT_LEN
    autocast_bf16: bool = False  # both towers under bf16 autocast (the GPU setting; overrides the rest)
    image_precision: str = "fp32"
    text_precision: str = "fp32"
    channels_last: bool = False
    compile_text: bool = False  # torch.compile (inductor, frozen weights) the text tower for single queries
    _text_paths: dict[str, TextPath] = field(default_factory=dict, repr=False)
    _compiled: dict[str, Any] = field(default_factory=dict, repr=False)
    _text_weights: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._text_weights = text_linear_weights(self.model)
        self.image_precision = resolve_precision(self.image_precision, "image", self.device)
        self.text_precision = resolve_precision(self.text_precision, "text", self.device, self._text_weights)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @property
    def dim(self) -> int:
        return self.model.embed_dim

    def _ctx(self, bf16: bool = False):
        if self.autocast_bf16 or bf16:
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def text_path(self, precision: str) -> TextPath:
        """The reduced-precision text tower, built once on first use."""
        if precision not in self._text_paths:
            self._text_paths[precision] = build_text_path(self.model, precision).to(self.device)
        return self._text_paths[precision]

    def compiled_text_path(self, precision: str) -> Any:
        """The text tower compiled for one query at a time (first call per length bucket compiles)."""
        if precision not in self._compiled:
            path = self.text_path(precision) if precision != "fp32" else build_text_path(self.model, "fp32")
            self._compiled[precision] = torch.compile(path, dynamic=False, options={"freezing": True})
        return self._compiled[precision]

    def warm_up(self, precision: str | None = None) -> None:
        """Build (and with ``compile_text`` compile, every length bucket) the query path now, not on the
        first query: a server calls this before it listens."""
        for n in sorted({min(b, self.max_text_len) for b in QUERY_BUCKETS}):
            self.encode_texts([" ".join(["a"] * max(1, n - 2))], precision=precision)

    def _pad_to_bucket(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = ids.shape[1]
        target = next((b for b in QUERY_BUCKETS if b >= length), length)
        target = max(length, min(target, self.max_text_len))
        if target == length:
            return ids, mask
        pad = target - length  # padded positions are masked out: the [CLS] state is unchanged
        return F.pad(ids, (0, pad), value=int(self.tokenizer.pad_token_id or 0)), F.pad(mask, (0, pad), value=0)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, precision: str | None = None) -> torch.Tensor:
        """(N,) strings -> (N, D) float32 L2-normalised embeddings on the CPU (``precision``: this call only)."""
        prec = resolve_precision(precision or self.text_precision, "text", self.device, self._text_weights)
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tokenize(self.tokenizer, list(texts[i : i + batch_size]), self.max_text_len)
            ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            if self.compile_text and ids.shape[0] == 1 and not self.autocast_bf16:
                out.append(self.compiled_text_path(prec)(*self._pad_to_bucket(ids, mask)).cpu())
            elif prec == "fp32" or self.autocast_bf16:
                with self._ctx():
                    out.append(self.model.encode_texts(ids, mask).float().cpu())
            else:
                out.append(self.text_path(prec)(ids, mask).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        prec = resolve_precision(precision or self.image_precision, "image", self.device)
        pixel_values = pixel_values.to(self.device)
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with self._ctx(bf16=prec == "bf16"):
            return self.model.encode_images(pixel_values).float().cpu()

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """(N,) PIL images -> (N, D) float32 L2-normalised embeddings on the CPU."""
        out = []
        for i in range(0, len(images), batch_size):
            out.append(self.encode_pixels(torch.stack([self.transform(im) for im in images[i : i + batch_size]])))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def compute_settings(self) -> dict[str, Any]:
        """How embeddings are computed (for cache keys and reports)."""
        return {"autocast_bf16": self.autocast_bf16, "image_precision": self.image_precision,
                "text_precision": self.text_precision, "channels_last": self.channels_last,
                "compile_text": self.compile_text}


def load_bundle(path: str | Path, device: str = "cpu", bf16: bool = False, image_precision: str = "fp32",
                text_precision: str = "fp32", channels_last: bool | None = None,
                compile_text: bool = False) -> ModelBundle:
    """Load a model directory. ``bf16``: both towers under bf16 autocast (GPUs). ``image_precision`` /
    ``text_precision``: "fp32" (default, exact), "bf16", "int8" (text) or "auto" (see the module doc).
    ``channels_last`` (None = on for CPUs): the image tower's memory format; same numbers, faster.
    ``compile_text``: torch.compile the text tower for single queries (a server's case; call
    ``bundle.warm_up()`` before serving, compiling takes tens of seconds per length bucket)."""
    path = Path(path)
    model = DualEncoder.from_pretrained(path).to(device).eval()
    tokenizer = load_tokenizer(path)
    pp = _image_processor_config(path)
    if pp is not None:
        transform = transform_from_processor_config(pp, train=False)
    elif model.preset is not None:
        transform = ImageTransform(size=model.preset.image_size, resize=model.preset.resize_size)
    else:
        raise FileNotFoundError(f"{path}: no preprocessor_config.json; save the model with `openalign train` "
                                "or copy the file from the model's hub page")
    if channels_last is None:
        channels_last = torch.device(device).type == "cpu"
    return ModelBundle(model=model, tokenizer=tokenizer, transform=transform, name=str(path), device=device,
                       autocast_bf16=bf16, image_precision=image_precision, text_precision=text_precision,
                       channels_last=channels_last, compile_text=compile_text)


def _image_processor_config(path: Path) -> dict | None:
    """The image processor settings: ``preprocessor_config.json`` (align-base, transformers 4) or the
    ``image_processor`` section of ``processor_config.json`` (what transformers 5 writes)."""
    pp = path / "preprocessor_config.json"
    if pp.is_file():
        return json.loads(pp.read_text())
    proc = path / "processor_config.json"
    if proc.is_file():
        section = json.loads(proc.read_text()).get("image_processor")
        if isinstance(section, dict):
            return section
    return None
