"""The contact sheet of a ranking (``imgrate rank --html FILE``): one self-contained HTML page.

Best first, each photo (or group of near-duplicates, shown once with its members) as a card:
its rank, its thumbnail, its file name, its percentile as a bar (one bar per model with
``--model all``), and a flag when it is unlike the training photos. At the top: the model,
what the percentiles are taken against, how far the order can be trusted (from
``reports/evaluate.json``) and, with several models, how much they agree on this folder. At
the end: the files that were not ranked, with the reason. Pictures are embedded as ``data:``
JPEGs (:mod:`imgrate.pages`): the page works offline. It is written card by card from the
ranking's thumbnail spool, so it never holds every picture in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO

from imgrate.errors import safe_text
from imgrate.io import atomic_open
from imgrate.pages import END, bar, esc, img, start
from imgrate.rank import Photo, Ranking, trust_words


def _agreement_words(rho: float | None) -> str:
    if rho is None:
        return "not measurable on these photos"
    if rho >= 0.8:
        return "they mostly agree"
    if rho >= 0.5:
        return "they agree on the broad order, not on the details"
    if rho >= 0.2:
        return "they agree only loosely: where they differ, neither is sure"
    return "they do not agree: treat any single model's order with care"


def _header(ranking: Ranking, title: str) -> str:
    p = ranking.primary
    parts = [start(f"imgrate: {title}", f"{title}: ranked best first")]
    pool = ranking.pool()
    parts.append(f'<p class="lead">Ordered by <b>{esc(p.name)}</b> <span class="muted">({esc(p.path)})</span>. '
                 + (f"Percentile: the share of {esc(pool)} that the model scores below the photo "
                    f"(80 = above 80% of them). " if pool else
                    "This model file has no reference block: retrain it for percentiles. ")
                 + "It is a statement about the model's scores, not a promise of likes.</p>")
    shaky = p.evaluation is None or p.evaluation.spearman_ci[0] <= 0
    parts.append(f'<p class="{"warn" if shaky else "claim"}">{esc(trust_words(p))}</p>')
    if len(ranking.runs) > 1:
        rows = "".join(
            f"<tr><td>{esc(r.name)}{' (orders the sheet)' if r is p else ''}</td>"
            f"<td class='num'>{'-' if r.validated is None else f'{r.validated:.2f}'}</td>"
            f"<td class='num'>{'-' if r.evaluation is None else f'{r.evaluation.spearman:.2f}'}</td>"
            f"<td class='num'>{'-' if r.evaluation is None else f'{100 * r.evaluation.pairwise:.0f}%'}</td></tr>"
            for r in ranking.runs)
        parts.append("<h2>Models</h2><table><tr><th>model</th><th>validation Spearman within users</th>"
                     f"<th>test Spearman within users</th><th>test pairwise accuracy</th></tr>{rows}</table>"
                     '<p class="muted">The sheet is ordered by the model with the best validation score; '
                     "each card shows every model's percentile.</p>")
        n = len(ranking.photos)
        agree = "".join(f"<li>{esc(a)} and {esc(b)}: rank correlation {'-' if rho is None else f'{rho:.2f}'} over "
                        f"this folder's {n} photos: {_agreement_words(rho)}.</li>"
                        for (a, b), rho in ranking.agreement.items())
        parts.append(f"<ul>{agree}</ul>")
    groups = ranking.members()
    dup = sum(1 for m in groups.values() if len(m) > 1)
    unusual = sum(1 for ph in ranking.photos if ph.placements[p.name].unusual)
    parts.append(f'<p class="muted">{len(ranking.photos)} photos ranked'
                 + (f", {dup} group{'s' if dup > 1 else ''} of near-duplicates shown once each" if dup else "")
                 + (f", {unusual} unusual (unlike the training photos: their score is a guess)" if unusual else "")
                 + (f", {len(ranking.errors)} files not ranked (listed at the end)" if ranking.errors else "")
                 + ".</p>")
    return "".join(parts)


def _bars(ranking: Ranking, photo: Photo) -> str:
    if len(ranking.runs) == 1:
        return f"<div>percentile {bar(photo.placements[ranking.primary.name].percentile)}</div>"
    return "".join(f'<div class="muted">{esc(r.name)} {bar(photo.placements[r.name].percentile)}</div>'
                   for r in ranking.runs)


def _card(ranking: Ranking, members: list[Photo], shown: Callable[[str], str]) -> str:
    photo, rest = members[0], members[1:]
    name = ranking.primary.name
    pl = photo.placements[name]
    thumb = ranking.thumbnail(photo)
    picture = (img(thumb, photo.file, "photo", rank=photo.rank, file=photo.file) if thumb is not None
               else '<p class="muted">(no thumbnail)</p>')
    flag = ('<div><span class="flag">unusual</span> <span class="muted">unlike the training photos: '
            "the score is a guess</span></div>" if pl.unusual else "")
    out = [f'<div class="card{" unusual" if pl.unusual else ""}" data-rank="{photo.rank}" data-group="{photo.group}">',
           picture, f'<div><span class="rank">#{photo.rank}</span> <span class="file">{esc(shown(photo.file))}</span></div>',
           _bars(ranking, photo), f'<div class="muted">score {photo.scores[name]:.4f}</div>', flag]
    if rest:
        out.append(f'<div class="muted">{len(rest)} near-duplicate{"s" if len(rest) > 1 else ""} '
                   "(same frame or burst), ranked lower:</div><div class='members'>")
        for m in rest:
            small = ranking.thumbnail(m)
            mp = m.placements[name].percentile
            out.append('<div class="member">' + (img(small, m.file, "member", rank=m.rank, file=m.file) if small else "")
                       + f"<div>#{m.rank}{'' if mp is None else f' · {mp:.0f}'}</div>"
                       f'<div class="file">{esc(shown(m.file))}</div></div>')
        out.append("</div>")
    out.append("</div>\n")
    return "".join(out)


def write_sheet(ranking: Ranking, path: Path, title: str, base: Path | None = None) -> None:
    """The contact sheet of ``ranking`` at ``path``, atomically (``title``: the folder, say;
    file names are shown relative to ``base`` when given)."""
    with atomic_open(path) as fh:
        _write(fh, ranking, title, base)


def _write(fh: IO[str], ranking: Ranking, title: str, base: Path | None) -> None:
    def shown(file: str) -> str:
        return str(Path(file).relative_to(base)) if base else file

    fh.write(_header(ranking, title))
    fh.write('<div class="grid">\n')
    for members in ranking.members().values():  # groups in the order of their best photo's rank
        fh.write(_card(ranking, members, shown))
    fh.write("</div>\n")
    if ranking.errors:
        fh.write(f"<h2>Not ranked ({len(ranking.errors)})</h2><ul class='errors'>")
        for e in ranking.errors:
            reason = e["error"].removeprefix(f"{safe_text(e['file'])}: ")
            fh.write(f"<li><span class='file'>{esc(e['file'])}</span>: {esc(reason)}</li>")
        fh.write("</ul>")
    fh.write(END)
