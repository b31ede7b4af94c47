"""``medzoo explain``: heatmaps of what a run's member or ensemble looks at."""
from __future__ import annotations

import sys

COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "explain": "heatmaps (Grad-CAM, integrated gradients, ...) of a run's member or ensemble on test or given images",
}


def register(sub) -> None:
    p = sub.add_parser(
        "explain",
        help=COMMANDS["explain"],
        description="Draw heatmaps of what one entry of a run folder looks at: a member (its kept checkpoint, the "
                    "mean of its fold models under [cv]) or an ensemble (its members' maps combined with the "
                    "member weights of its fitted method, equal weights for methods without any). By default the "
                    "most confident true positives, false positives and false negatives on test (val when test has "
                    "no labels) are explained; --images explains given images instead. Writes <id>.png overlays, "
                    "grid.png, picks.csv and, for an ensemble, members.png, to RUN_DIR/explain/<entry>/. Needs the "
                    "explain extra: pip install 'medzoo[explain]'.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. results/pneumoniamnist")
    p.add_argument("--entry", help="the member id or ensemble name to explain (default: the leaderboard's rank 1); "
                                   "a temperature-scaled copy (mean+ts) has its source's maps")
    p.add_argument("--images", nargs="+", metavar="IMAGE",
                   help="explain these instead: image files and/or folders, one CSV of image paths, or one .npz "
                        "(FILE.npz or FILE.npz:SPLIT), as medzoo predict reads them")
    p.add_argument("--method", default="gradcam", help=f"one of {', '.join(_method_names())} (default: gradcam)")
    p.add_argument("--target", metavar="CLASS", help="the class explained (default: the positive class of two, "
                                                     "else each image's predicted class)")
    p.add_argument("--layer", help="the module a CAM method reads, by path in the model (default: the family's last "
                                   "convolutional block), or 'aux' for Inception's auxiliary head")
    p.add_argument("--per-group", type=int, default=4, metavar="K",
                   help="images per group TP / FP / FN (default: 4)")
    p.add_argument("--size", type=int, help="display size in pixels (default: the entry's largest input size)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/explain/<entry>/)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.set_defaults(func=_explain)


def _method_names() -> list[str]:
    from medzoo.zoo.explain import METHODS

    return METHODS.names()


def _explain(args) -> int:
    from medzoo.core.rundir import RunDir
    from medzoo.zoo.explain import explain_run

    run = RunDir(args.run_dir)
    entry, why = (args.entry, "") if args.entry else (_rank_one(run), " (the leaderboard's rank 1)")
    try:
        result = explain_run(run.path, entry, images=args.images, method=args.method, target=args.target,
                             layer=args.layer, per_group=args.per_group, size=args.size, device=args.device,
                             out=args.out, progress=True)
    except ImportError as e:
        print(f"medzoo explain: error: {e}", file=sys.stderr)
        return 1
    groups = list(dict.fromkeys(p.group for p in result.picks))
    counts = ", ".join(f"{sum(p.group == g for p in result.picks)} {g}" for g in groups)
    source = f"{result.split}: {counts}" if result.split else "given"
    print(f"explained {entry}{why} with {args.method}: {len(result.picks)} images ({source})")
    if result.note:
        print(f"note: {result.note}")
    print(f"  overlays: {result.folder}/<image id>.png ({len(result.overlays)} files)")
    print(f"  grid: {result.grid}")
    if result.members_png:
        print(f"  members: {result.members_png}")
    print(f"  picks: {result.picks_csv}")
    return 0


def _rank_one(run) -> str:
    """The run's table ranked 1 on its ``leaderboard.csv`` (:meth:`RunDir.ranked`); raises listing the entries
    when there is none."""
    from medzoo.zoo.apply import run_entries

    if not run.path.is_dir():
        raise FileNotFoundError(f"no run folder at {run.path}")
    ranked = run.ranked()
    if not ranked:
        why = "ranks none of its entries" if run.leaderboard_csv.is_file() else "is missing"
        listed = ", ".join(run_entries(run)) or "none (train the run first)"
        raise ValueError(f"{run.leaderboard_csv} {why}: name the entry with --entry; entries: {listed}")
    return ranked[0]
