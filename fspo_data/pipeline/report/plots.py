"""The report's plots (matplotlib), each returned as a base64 PNG for the self-contained page."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import polars as pl

from fspo_data.personas import diversity as dv
from fspo_data.pipeline.report.figures import (
    CandidateFigures,
    JudgmentFigures,
    TraitFigures,
    colour_attribute,
)

HEATMAP_USERS = 100
MAP_POINTS = 5000


def _figure(width: float, height: float) -> Any:
    # matplotlib's object API needs no pyplot state or global backend; imported here because it
    # is slow to import and only the report draws.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def persona_map(
    personas: pl.DataFrame, traits: pl.DataFrame, vectors: np.ndarray, seed: int
) -> str:
    """Up to MAP_POINTS personas on their two principal axes, coloured by one trait."""
    shown = dv.sample_indices(len(vectors), MAP_POINTS, seed)
    xy = dv.pca_2d(vectors)[shown]
    attribute = colour_attribute(traits)
    coloured = traits.filter(pl.col("name") == attribute).select("persona_uuid", "value")
    value_of = dict(coloured.iter_rows())
    colours = np.array([value_of.get(u, "(none)") for u in personas["persona_uuid"].gather(shown)])
    figure = _figure(8, 5.5)
    ax = figure.add_subplot()
    for value in sorted(set(colours)):
        at = colours == value
        ax.scatter(xy[at, 0], xy[at, 1], s=8, alpha=0.7, label=value)
    ax.legend(title=attribute, loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8)
    ax.set(xlabel="principal axis 1", ylabel="principal axis 2")
    ax.set_title(f"{len(shown)} of {len(vectors)} personas, coloured by {attribute}")
    return _png(figure)


def trait_bars(traits: list[TraitFigures]) -> str:
    """One panel per attribute: observed shares as bars, the taxonomy's weights as ticks."""
    many_domains = len({t.domain for t in traits}) > 1
    cols = 4
    rows = -(-len(traits) // cols)
    figure = _figure(4 * cols, 3.4 * rows)
    for i, t in enumerate(traits):
        ax = figure.add_subplot(rows, cols, i + 1)
        x = np.arange(len(t.weights))
        ax.bar(x, [t.shares[v] for v in t.weights], color="tab:blue")
        ax.scatter(x, list(t.weights.values()), marker="_", s=150, color="black", zorder=3)
        ax.set_xticks(x, list(t.weights), rotation=60, ha="right", fontsize=7)
        name = f"{t.domain}: {t.attribute}" if many_domains else t.attribute
        ax.set_title(f"{name}\n{t.values_seen}/{t.values_total} seen, KL {t.kl:.3f}", fontsize=9)
    return _png(figure)


def candidate_histogram(figures: CandidateFigures) -> str:
    figure = _figure(7, 4)
    ax = figure.add_subplot()
    ax.stairs(figures.histogram.counts, figures.histogram.edges, fill=True)
    ax.axvline(figures.mean_similarity, color="black", linestyle="--", label="mean")
    ax.set(xlabel="mean pairwise cosine of a question's candidates", ylabel="questions")
    ax.legend()
    return _png(figure)


def agreement_heatmap(figures: JudgmentFigures, agreement: dv.Agreement) -> str:
    """The HEATMAP_USERS sampled users sharing the most pairs, alike labellers side by side."""
    import matplotlib

    # The users who share the most pairs with others: random ones would show mostly grey.
    sharing = agreement.shared.sum(axis=1) - np.diag(agreement.shared)
    shown = np.sort(np.argsort(-sharing, kind="stable")[:HEATMAP_USERS])
    matrix = agreement.agreement[np.ix_(shown, shown)]
    # Order users along the leading eigenvector so that users who label alike sit together.
    order = np.argsort(np.linalg.eigh(np.nan_to_num(matrix - 0.5))[1][:, -1])
    figure = _figure(6.5, 5.5)
    ax = figure.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(matrix[np.ix_(order, order)]), cmap=cmap, vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of shared pairs labelled the same")
    ax.set_title(f"{len(shown)} of {figures.users} users: those sharing the most pairs")
    ax.set(xlabel="user", ylabel="user")
    return _png(figure)


def cross_user_entropy_histogram(figures: JudgmentFigures) -> str:
    figure = _figure(7, 4)
    ax = figure.add_subplot()
    histogram = figures.cross_user_entropy_histogram
    ax.stairs(histogram.counts, histogram.edges, fill=True)
    ax.axvline(np.log(2), color="black", linestyle=":", label="ln 2 (even split)")
    ax.set(xlabel="label entropy of a pair across users (nats)", ylabel="pairs")
    ax.legend()
    return _png(figure)
