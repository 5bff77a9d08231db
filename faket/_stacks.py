"""FakeT NST of whole stacks and of one batch of tilts (a part of faket.nst, re-exported there).

The stacks' ranges, the [0, 1] scaling, the NST of each batch and each tilt's
reference statistics, with the next batch read and uploaded while one computes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from ._memory import stylize_batch_fitting
from ._scaling import match_tilt_stats, stack_range, to_unit
from ._tensors import as_tensor
from ._transfer import Uploaded, read_ahead, to_host, upload
from .errors import FaketInputError

if TYPE_CHECKING:
    from .nst import StyleTransfer


def check_stacks(
    content_shape: tuple[int, ...],
    style_shapes: Sequence[tuple[int, ...]],
    init_shape: tuple[int, ...] | None,
    names: dict[str, str] | None = None,
) -> None:
    """Check tilt counts and image sizes of the content, style and init stacks."""
    names = names or {}
    n = content_shape[0]
    for k, shp in enumerate(style_shapes):
        if shp[0] != n:
            raise FaketInputError(
                f"style {names.get(f'style{k}', k)} has {shp[0]} tilts but content "
                f"{names.get('content', '')} has {n}: give one style tilt per content tilt"
            )
    if init_shape is not None and tuple(init_shape) != tuple(content_shape):
        raise FaketInputError(
            f"init {names.get('init', '')} has shape {tuple(init_shape)} but content "
            f"has {tuple(content_shape)}: they must match"
        )


def stylize_tilts(
    transfer: StyleTransfer,
    content: np.ndarray,
    init: np.ndarray | None,
    reference: np.ndarray,
    ranges: dict[str, Any],
    *,
    styles: Sequence[np.ndarray] | None = None,
    style_targets: dict | None = None,
    style_image_weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The method for one batch of tilts: scale to [0, 1], NST, give each tilt the reference's stats.

    content, init: ``(b, H, W)`` tilts of CONTENT and NOISY (init may be None);
    reference: ``(b, Hs, Ws)`` the first style stack's tilts (whose mean and std
    the result gets); ranges: stack ``(min, max)`` of ``"content"``, ``"init"``
    and ``"style0"``, ``"style1"``, ... (the whole stacks', so that a batch alone
    gives what the stack gives). The styles are ``styles`` (raw tilts, default
    ``[reference]``) or precomputed ``style_targets`` of
    :meth:`StyleTransfer.style_targets`. Returns ``(images (b, H, W) float32,
    last loss of each tilt (b,))``.
    """
    dev = transfer.device  # scaling and statistics run where the NST runs: no host round trips
    unit_styles = None
    if style_targets is None:
        raw_styles = styles or [reference]
        unit_styles = [to_unit(as_tensor(st, dev), *ranges[f"style{k}"]) for k, st in enumerate(raw_styles)]
    res = stylize_batch_fitting(
        transfer,
        to_unit(as_tensor(content, dev), *ranges["content"]),
        unit_styles,
        None if init is None else to_unit(as_tensor(init, dev), *ranges["init"]),
        style_image_weights,
        generator=generator,
        style_targets=style_targets,
    )
    images = match_tilt_stats(res.images.to(dev, torch.float32), as_tensor(reference, dev))
    return to_host(images), res.losses.cpu().numpy()


def nst_batches(n: int, batch_size: int) -> list[slice]:
    """The NST batches of ``n`` tilts: slices of ``batch_size`` tilts, the last one shorter."""
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def iter_stylize(
    content: np.ndarray,
    styles: Sequence[np.ndarray],
    init: np.ndarray | None,
    transfer: StyleTransfer,
    *,
    style_image_weights: Sequence[float] | None = None,
    ranges: dict[str, tuple | None] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """FakET NST of whole stacks, one batch of tilts at a time.

    content: ``(n, H, W)`` noiseless projections (CONTENT); styles: reference
    stacks ``(n, Hs, Ws)``; init: ``(n, H, W)`` start (NOISY) or None. Arrays
    may be memory maps: only the stacks' ranges and one batch are read at once.
    Yields ``(first tilt index, stylised tilts (b, H, W) in the first style
    stack's units, last loss of each tilt (b,))``.
    ranges: stack (min, max) already known, ``{"content", "init", "style0", ...}``
    (e.g. :attr:`faket.io.Stack.value_range`); the others are read here.
    """
    check_stacks(content.shape, [st.shape for st in styles], None if init is None else init.shape)
    known = {k: v for k, v in (ranges or {}).items() if v is not None}
    c_rng = known.get("content") or stack_range(content)
    s_rngs = [known.get(f"style{k}") or stack_range(st) for k, st in enumerate(styles)]
    i_rng = None if init is None else (known.get("init") or stack_range(init))
    batches = nst_batches(content.shape[0], transfer.settings.batch_size)
    gen = torch.Generator().manual_seed(transfer.settings.seed)
    rngs: dict[str, Any] = {"content": c_rng, "init": i_rng, **{f"style{k}": r for k, r in enumerate(s_rngs)}}

    def load(k: int) -> Uploaded:  # on CUDA the next batch is read and uploaded while this one computes
        sl = batches[k]
        batch: dict[str, Any] = {"content": content[sl], "init": None if init is None else init[sl]}
        batch["styles"] = [st[sl] for st in styles]
        return upload(batch, transfer.device)

    for k, uploaded in enumerate(read_ahead(load, len(batches), transfer.device.type == "cuda")):
        batch = uploaded.ready()
        images, losses = stylize_tilts(
            transfer,
            batch["content"],
            batch["init"],
            batch["styles"][0],
            rngs,
            styles=batch["styles"],
            style_image_weights=style_image_weights,
            generator=gen,
        )
        yield batches[k].start, images, losses


def stylize_stack(
    content: np.ndarray,
    styles: Sequence[np.ndarray],
    init: np.ndarray | None,
    transfer: StyleTransfer,
    *,
    style_image_weights: Sequence[float] | None = None,
) -> np.ndarray:
    """FakET NST of whole stacks in memory: ``(n, H, W)`` float32 (see :func:`iter_stylize`)."""
    out = np.empty(content.shape, dtype=np.float32)
    for start, images, _ in iter_stylize(
        content, styles, init, transfer, style_image_weights=style_image_weights
    ):
        out[start : start + len(images)] = images
    return out
