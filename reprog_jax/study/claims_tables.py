"""The claims' files and tables: `seeds.csv`, `claims.csv` and the claims
section of `report.md` (`study.claims` computes, this module lays out)."""

import csv
import io

from reprog_jax.data.fewshot import shot_name
from reprog_jax.study import claims

# seeds.csv: these columns first, then every other metric some run has
# (sorted), then the network's architecture and source top-1 (%).
SEED_COLUMNS = ("dataset", "n_shot", "network", "kind", "method", "seed",
                "selection", "epoch", "test_acc", "test_ece",
                "test_ece_adaptive", "test_pytorch_logged_quantity")
_NOT_METRICS = {"seed", "epoch", "lr", "best_epoch"}
QUANTITY_NAMES = {"test_acc": "accuracy", "test_ece": "ECE",
                  "test_ece_adaptive": "adaptive ECE",
                  "test_pytorch_logged_quantity":
                      "the PyTorch version's logged 'ECE'"}


def _csv_text(header, rows) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(header)
  # csv writes None as an empty field and floats as repr(): they parse
  # back exactly.
  writer.writerows(rows)
  return out.getvalue()


def seeds_csv(rows) -> str:
  """One line per (dataset, n_shot, network, method, seed, selection) of
  every finished run."""
  done = [r for r in rows if r.status == "done"]
  others = sorted({key for r in done for records in r.selections.values()
                   for record in records.values() for key in record}
                  - set(SEED_COLUMNS) - _NOT_METRICS)
  header = SEED_COLUMNS + tuple(others) + ("arch", "source_top1")
  lines = []
  for r in done:
    for selection in claims.SELECTIONS:
      for seed, record in sorted(r.selections.get(selection, {}).items()):
        lines.append([r.dataset, r.n_shot, r.network, r.kind, r.method, seed,
                      selection, record.get("epoch")]
                     + [record.get(k) for k in SEED_COLUMNS[8:] + tuple(
                         others)] + [r.arch, r.source_top1])
  return _csv_text(header, lines)


def claims_csv(cells) -> str:
  """claims.csv: one line per cell, `claims.COLUMNS`."""
  return _csv_text(claims.COLUMNS,
                   [[c[k] for k in claims.COLUMNS] for c in cells])


# --------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------


def _number(value, scale=1.0, digits=4) -> str:
  return "-" if value is None else f"{scale * value:.{digits}f}"


def _p(value) -> str:
  return "-" if value is None else f"{value:.3g}"


def _interval(cell, scale, digits) -> str:
  if cell["diff_mean"] is None:
    return "-"
  return (f"{_number(cell['diff_mean'], scale, digits)} "
          f"[{_number(cell['ci_low'], scale, digits)}, "
          f"{_number(cell['ci_high'], scale, digits)}]")


def markdown(rows, options=claims.Options()) -> list[str]:
  """The claims section of report.md: claims.csv as tables, per model
  selection (validation first, when the runs recorded it), and the
  secondary analysis."""
  cells = claims.cells(rows, options)
  lines = [
      "## Claims", "",
      "Each cell: one ticket against the dense network of its "
      "architecture on one dataset and few-shot budget, runs paired by "
      "seed (a seed gives both the same few-shot subset and training "
      "order). *dense - ticket*: the mean of the per-seed differences, "
      "[a two-sided 95 % Student-t interval] (n - 1 degrees of freedom); "
      "*p*: one-sided paired t-test in the claim's direction; *Holm*: p "
      "adjusted over the cells of one claim, quantity, selection and "
      f"method. alpha = {options.alpha:g}. The tests are one-sided and the "
      "interval two-sided, so a significant cell's interval can touch 0. "
      "Fewer than 2 paired seeds: not testable. Every number is in "
      "`claims.csv`, every seed's in `seeds.csv`.", ""]
  if not cells:
    return lines + ["No dense network and ticket share a dataset and n_shot "
                    "here, so neither claim can be tested."]
  for selection in claims.selections(rows):
    mine = [c for c in cells if c["selection"] == selection]
    lines += [f"### Selection `{selection}`: "
              f"{claims.SELECTIONS[selection][1]}", ""]
    lines += _claim_one(mine, options)
    lines += _claim_two(mine)
  lines += _secondary(claims.gap_cells(rows, options))
  return lines


_HEAD = ("| dataset | shots | ticket | remaining (%) | dense | method | "
         "seeds | dense | ticket | dense - ticket [95 % CI] |")


def _cell_line(c, scale, digits, tail) -> str:
  remaining = _number(c["remaining"], 1, 2)
  shots = shot_name(c["n_shot"])
  return (f"| {c['dataset']} | {shots} | {c['ticket']} | "
          f"{remaining} | {c['dense']} | {claims.label(c['method'])} | "
          f"{c['n_seeds']} | {_number(c['dense_mean'], scale, digits)} | "
          f"{_number(c['ticket_mean'], scale, digits)} | "
          f"{_interval(c, scale, digits)} | " + " | ".join(tail) + " |")


def _claim_one(cells, options) -> list[str]:
  mine = [c for c in cells if c["claim"] == "1"]
  verdict, counts = claims.overall("1", mine)
  lines = ["#### 1. Tickets are not universal reprogrammers", "",
           "The ticket's reprogramming (VP) accuracy is significantly lower "
           "than the dense network's (Holm-adjusted p < alpha) while their "
           "source top-1 differ by at most "
           f"{options.similar_source_pp:g} percentage points (source gap: "
           "dense - ticket); the paper claims it for some targets. Accuracy "
           "in %, differences in percentage points.", "",
           f"**Overall: {verdict}** ({counts}).", ""]
  if not mine:
    return lines
  variants = sorted({c["method"] for c in mine},
                    key=lambda m: (claims.method_rank(m), m))
  for method in variants:
    theirs = [c for c in mine if c["method"] == method]
    if len(variants) > 1:  # A table per label mapping / prompt.
      verdict, counts = claims.overall("1", theirs)
      lines += [f"##### {claims.label(method)}", "",
                f"**{claims.label(method)}: {verdict}** ({counts}).", ""]
    lines += [_HEAD + " source gap (pp) | p | p (Holm) | verdict |",
              "|" + " --- |" * 14]
    for c in theirs:
      note = (" (source similarity not checked)"
              if c["verdict"] == "held" and c["source_gap_pp"] is None
              else "")
      lines.append(_cell_line(c, 100, 2, [
          _number(c["source_gap_pp"], 1, 2), _p(c["p_value"]),
          _p(c["p_adjusted"]), f"**{c['verdict']}**{note}"]))
    lines.append("")
  return lines


def _claim_two(cells) -> list[str]:
  lines = ["#### 2. Dense networks are better calibrated", "",
           "Per quantity: *held* where the dense network's value is "
           "significantly below the ticket's, *contradicted* where it is "
           "significantly above (Holm, both directions), *inconclusive* "
           "otherwise; the paper claims it always, for LP and VP. Overall: "
           "contradicted if any cell is, held if every testable cell is.", ""]
  for metric in claims.CLAIM_TWO_METRICS:
    mine = [c for c in cells if c["claim"] == "2" and c["metric"] == metric]
    if not mine:
      continue
    verdict, counts = claims.overall("2", mine)
    lines += [f"**{QUANTITY_NAMES[metric]} (`{metric}`): {verdict}** "
              f"({counts}).", ""]
    lines += [_HEAD + " p | p (Holm) | p opposite (Holm) | verdict |",
              "|" + " --- |" * 14]
    for c in mine:
      lines.append(_cell_line(c, 1, 4, [
          _p(c["p_value"]), _p(c["p_adjusted"]),
          _p(c["p_opposite_adjusted"]), f"**{c['verdict']}**"]))
    lines.append("")
  return lines


def _secondary(cells) -> list[str]:
  lines = ["### Secondary analysis (not claim 1): the VP gap exceeds the LP "
           "gap", "",
           "Per seed: (dense - ticket accuracy under VP) - (the same under "
           "LP), tested one-sided for > 0 with the same statistics (Holm "
           "per selection and method pair). A ticket can hold this and "
           "still beat the dense network at VP: it is not the paper's "
           "claim 1.", ""]
  if not cells:
    return lines + ["No cell has both a reprogramming and a linear-probing "
                    "method."]
  lines += ["| selection | dataset | shots | ticket | dense | seeds | VP gap "
            "(pp) | LP gap (pp) | VP gap - LP gap [95 % CI] (pp) | p (Holm) "
            "| verdict |", "|" + " --- |" * 11]
  for c in cells:
    lines.append(
        f"| {c['selection']} | {c['dataset']} | "
        f"{shot_name(c['n_shot'])} | "
        f"{c['ticket']} | {c['dense']} | {c['n_seeds']} | "
        f"{_number(c['vp_gap'], 100, 2)} | {_number(c['lp_gap'], 100, 2)} | "
        f"{_interval(c, 100, 2)} | {_p(c['p_adjusted'])} | "
        f"**{c['verdict']}** |")
  return lines
